// Next-token selection on the GPU, for fused decoding (src/sampling.ts semantics).
//
//   argmax_partial  greedy, stage 1: workgroup (chunk, row) → the chunk's (max, first index)
//   argmax_final    greedy, stage 2: one workgroup reduces every row's partials, writes the
//                   token to `tok[b]` (fed back next step) and `outTok[slot·B + b]`
//   rng_draw        one thread draws one uniform per row, in row order, from the shared
//                   xoshiro128** stream (as Xoshiro128.nextFloat)
//   sample_rows     one workgroup per row: repetition penalty over the `seen` bitmap, then
//                   argmax (greedy) or temperature, top-k, top-p, min-p and a draw from the
//                   renormalised distribution; marks the token in `seen`
//
// With ROWS every row has its own sampling options and its own xoshiro128** stream, in `rng`:
// ROW_WORDS words per row, the 4 words of state, then flags, topK, invT, T, topP, logMinP and
// penalty (the floats bitcast), so one batch decodes requests with different settings and seeds.
//
// Logit rows have `V` entries (the padded vocabulary); only ids < `vocab` are considered.

struct P {
  V: u32,          // logits row stride
  vocab: u32,      // ids considered
  B: u32,          // rows
  slot: u32,       // index of this step in the output block
  chunk: u32,      // argmax_partial: ids per workgroup
  nChunks: u32,
  topK: u32,
  flags: u32,      // 1 greedy, 2 repetition penalty, 4 top-p, 8 min-p
  invT: f32,       // 1 / temperature
  T: f32,
  topP: f32,
  logMinP: f32,    // log(minP)
  penalty: f32,
  words: u32,      // u32 words per row of `seen`
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> tok: array<u32>;
@group(0) @binding(3) var<storage, read_write> outTok: array<u32>;
@group(0) @binding(4) var<storage, read_write> partial: array<vec2<u32>>; // (key, index)
@group(0) @binding(5) var<storage, read_write> rng: array<u32>;          // 4 words of state
@group(0) @binding(6) var<storage, read_write> uni: array<f32>;          // [B] uniforms
@group(0) @binding(7) var<storage, read_write> seen: array<u32>;         // [B, words] bitmap
@group(0) @binding(8) var<storage, read_write> work: array<f32>;         // [B, V] scratch

const WG = 256u;
const ROW_WORDS = 12u;
const NEG_INF = -3.402823466e38;

// Order-preserving map of an f32 to u32 (NaN below everything, like −∞ minus one).
fn key(v: f32) -> u32 {
  if (v != v) {
    return 0u;
  }
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn unkey(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// ---------------------------------------------------------------- greedy

var<workgroup> rk: array<u32, WG>;
var<workgroup> ri: array<u32, WG>;

// Better of two (key, index) candidates: larger key, then smaller index.
fn better(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
  return ka > kb || (ka == kb && ia < ib);
}

fn reduce_best(lid: u32, k: u32, i: u32) -> vec2<u32> {
  rk[lid] = k;
  ri[lid] = i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s && better(rk[lid + s], ri[lid + s], rk[lid], ri[lid])) {
      rk[lid] = rk[lid + s];
      ri[lid] = ri[lid + s];
    }
    workgroupBarrier();
  }
  let r = vec2<u32>(rk[0], ri[0]);
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn argmax_partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let b = wid.y;
  let i0 = wid.x * p.chunk;
  let i1 = min(p.vocab, i0 + p.chunk);
  var bk = 0u;
  var bi = 0xffffffffu;
  for (var i = i0 + lid; i < i1; i += WG) {
    let k = key(logits[b * p.V + i]);
    if (better(k, i, bk, bi)) {
      bk = k;
      bi = i;
    }
  }
  let r = reduce_best(lid, bk, bi);
  if (lid == 0u) {
    partial[b * p.nChunks + wid.x] = r;
  }
}

// One workgroup per sequence (a single one looping over 16 rows took 25 µs on the H200).
@compute @workgroup_size(WG)
fn argmax_final(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let b = wid.x;
  var bk = 0u;
  var bi = 0xffffffffu;
  for (var c = lid; c < p.nChunks; c += WG) {
    let r = partial[b * p.nChunks + c];
    if (better(r.x, r.y, bk, bi)) {
      bk = r.x;
      bi = r.y;
    }
  }
  let r = reduce_best(lid, bk, bi);
  if (lid == 0u) {
    let t = min(r.y, p.vocab - 1u);
    tok[b] = t;
    outTok[p.slot * p.B + b] = t;
  }
}

// ---------------------------------------------------------------- RNG

fn rotl(x: u32, k: u32) -> u32 {
  return (x << k) | (x >> (32u - k));
}

// Next word of the stream whose state is rng[o .. o + 4].
fn next_u32(o: u32) -> u32 {
  let s0 = rng[o];
  let s1 = rng[o + 1u];
  let s2 = rng[o + 2u];
  let s3 = rng[o + 3u];
  let r = rotl(s1 * 5u, 7u) * 9u;
  let t = s1 << 9u;
  let n2 = s2 ^ s0;
  let n3 = s3 ^ s1;
  rng[o + 1u] = s1 ^ n2;
  rng[o] = s0 ^ n3;
  rng[o + 2u] = n2 ^ t;
  rng[o + 3u] = rotl(n3, 11u);
  return r;
}

@compute @workgroup_size(1)
fn rng_draw() {
  for (var b = 0u; b < p.B; b++) {
#if ROWS
    let o = b * ROW_WORDS;
#else
    let o = 0u;
#endif
    let a = next_u32(o) >> 5u;
    let c = next_u32(o) >> 6u;
    // (a·2^26 + c) / 2^53, rounded to f32.
    uni[b] = f32(a) * (1.0 / 134217728.0) + f32(c) * (1.0 / 9007199254740992.0);
  }
}

// ---------------------------------------------------------------- full sampler

var<workgroup> rf: array<f32, WG>;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> pickD: u32;
var<workgroup> pickK: u32;
var<workgroup> bcast: f32;

// One row's sampling options (from `p`, or per row with ROWS).
struct Opts {
  flags: u32,
  topK: u32,
  invT: f32,
  T: f32,
  topP: f32,
  logMinP: f32,
  penalty: f32,
}

var<workgroup> rowOpts: Opts;

fn sum_f(lid: u32, v: f32) -> f32 {
  rf[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      rf[lid] += rf[lid + s];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    bcast = rf[0];
  }
  return workgroupUniformLoad(&bcast);
}

fn is_seen(b: u32, i: u32) -> bool {
  return (seen[b * p.words + (i >> 5u)] & (1u << (i & 31u))) != 0u;
}

fn weight(v: f32, lmax: f32, invT: f32) -> f32 {
  return select(exp((v - lmax) * invT), 1.0, v == lmax);
}

@compute @workgroup_size(WG)
fn sample_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let b = wid.x;
  let row = b * p.V;
  let n = p.vocab;
#if ROWS
  if (lid == 0u) {
    let o = b * ROW_WORDS + 4u;
    rowOpts = Opts(
      rng[o],
      rng[o + 1u],
      bitcast<f32>(rng[o + 2u]),
      bitcast<f32>(rng[o + 3u]),
      bitcast<f32>(rng[o + 4u]),
      bitcast<f32>(rng[o + 5u]),
      bitcast<f32>(rng[o + 6u]),
    );
  }
  let q = workgroupUniformLoad(&rowOpts);
#else
  let q = Opts(p.flags, p.topK, p.invT, p.T, p.topP, p.logMinP, p.penalty);
#endif
  // 1. Penalised logits into `work` (NaN → −∞), max and first argmax.
  var bk = 0u;
  var bi = 0xffffffffu;
  for (var i = lid; i < n; i += WG) {
    var v = logits[row + i];
    if ((q.flags & 2u) != 0u && is_seen(b, i)) {
      v = select(v / q.penalty, v * q.penalty, v < 0.0);
    }
    if (v != v) {
      v = NEG_INF;
    }
    work[row + i] = v;
    let k = key(v);
    if (better(k, i, bk, bi)) {
      bk = k;
      bi = i;
    }
  }
  let best = reduce_best(lid, bk, bi);
  var chosen = best.y;
  if ((q.flags & 1u) == 0u) {
    let lmax = unkey(best.x);
    // 2. Top-k: the k-th largest key, by radix selection (duplicates count).
    var thrKey = 0u;
    if (q.topK > 0u && q.topK < n) {
      var prefix = 0u;
      var mask = 0u;
      var kk = q.topK;
      for (var shift = 24i; shift >= 0i; shift -= 8i) {
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var i = lid; i < n; i += WG) {
          let k = key(work[row + i]);
          if ((k & mask) == prefix) {
            atomicAdd(&hist[(k >> u32(shift)) & 255u], 1u);
          }
        }
        workgroupBarrier();
        if (lid == 0u) {
          var cum = 0u;
          var d = 255i;
          for (; d >= 0i; d--) {
            let h = atomicLoad(&hist[d]);
            if (cum + h >= kk) {
              pickD = u32(d);
              pickK = kk - cum;
              break;
            }
            cum += h;
          }
        }
        let d = workgroupUniformLoad(&pickD);
        kk = workgroupUniformLoad(&pickK);
        prefix |= d << u32(shift);
        mask |= 255u << u32(shift);
      }
      thrKey = prefix;
    }
    // 3. Top-p: the smallest key c with mass(keys > c) < topP · mass(keys ≥ thr).
    if ((q.flags & 4u) != 0u) {
      var tot = 0.0;
      for (var i = lid; i < n; i += WG) {
        let v = work[row + i];
        if (key(v) >= thrKey) {
          tot += weight(v, lmax, q.invT);
        }
      }
      let goal = q.topP * sum_f(lid, tot);
      var lo = max(thrKey, 1u);
      var hi = 0xffffffffu;
      while (lo < hi) {
        let mid = lo + (hi - lo) / 2u;
        var above = 0.0;
        for (var i = lid; i < n; i += WG) {
          let v = work[row + i];
          let k = key(v);
          if (k > mid && k >= thrKey) {
            above += weight(v, lmax, q.invT);
          }
        }
        if (sum_f(lid, above) < goal) {
          hi = mid;
        } else {
          lo = mid + 1u;
        }
      }
      thrKey = max(thrKey, lo);
    }
    // 4. Min-p, relative to the top probability.
    if ((q.flags & 8u) != 0u) {
      thrKey = max(thrKey, key(lmax + q.T * q.logMinP));
    }
    thrKey = min(thrKey, best.x);
    // 5. Draw: the first id whose running weight exceeds u · total, ids in order. Each thread
    // owns a contiguous segment; an exclusive scan of the segment sums finds the segment.
    let seg = (n + WG - 1u) / WG;
    let s0 = min(n, lid * seg);
    let s1 = min(n, s0 + seg);
    var mine = 0.0;
    var lastId = 0u;
    var hasAny = false;
    for (var i = s0; i < s1; i++) {
      let v = work[row + i];
      if (key(v) >= thrKey) {
        mine += weight(v, lmax, q.invT);
        lastId = i;
        hasAny = true;
      }
    }
    rf[lid] = mine;
    workgroupBarrier();
    for (var s = 1u; s < WG; s <<= 1u) {
      var add = 0.0;
      if (lid >= s) {
        add = rf[lid - s];
      }
      workgroupBarrier();
      rf[lid] += add;
      workgroupBarrier();
    }
    let incl = rf[lid];
    let total = rf[WG - 1u];
    workgroupBarrier();
    if (lid == 0u) {
      atomicStore(&hist[0], 0xffffffffu);
      atomicStore(&hist[1], 0u);
    }
    workgroupBarrier();
    if (hasAny) {
      atomicMax(&hist[1], lastId);
    }
    let u = uni[b] * total;
    var acc = incl - mine;
    if (hasAny && u < incl) {
      for (var i = s0; i < s1; i++) {
        let v = work[row + i];
        if (key(v) >= thrKey) {
          acc += weight(v, lmax, q.invT);
          if (u < acc) {
            atomicMin(&hist[0], i);
            break;
          }
        }
      }
    }
    workgroupBarrier();
    let found = atomicLoad(&hist[0]);
    chosen = select(found, atomicLoad(&hist[1]), found == 0xffffffffu);
  }
  if (lid == 0u) {
    let t = min(chosen, n - 1u);
    tok[b] = t;
    outTok[p.slot * p.B + b] = t;
    seen[b * p.words + (t >> 5u)] |= 1u << (t & 31u);
  }
}
