// Decoding attention (one new token per sequence) over a long KV cache, split in the manner of
// flash-decoding: `attn_split` gives each workgroup one contiguous range of slots (a split) of
// one head of one sequence; it scores them, and writes the unnormalised partial Σ e^(s − m)·v
// with its max m and sum l. `attn_merge` then combines the partials of each (sequence, head):
//   out = Σ_s e^(m_s − M)·acc_s / Σ_s e^(m_s − M)·l_s,  M = max_s m_s.
// The query of sequence b is row b of qkv ([q (nh·HD) | k | v]); it sees slots 0 … len − 1.
// Partials: [batch, nh, nsplit, HD + 2]. Cache layout [batch, nkv, cap, HD].
//
// The grid is fixed (nsplit splits per head) and the split length follows the context:
// max(MINCHUNK, ⌈len / nsplit⌉) slots, so that a step recorded once can be replayed at every
// position (splits past the context write an empty partial); the host picks nsplit so that a
// split never exceeds MAXCHUNK slots (its scores are kept in workgroup memory) and there are
// enough workgroups to fill the GPU.
//
// Scores: each lane owns slots and reads their key rows with 16-byte loads (V4). Values: lanes
// own (vec4) channels, in G = WG / HD4 groups that take every G-th slot, so a group reads whole
// value rows at once; four slots are in flight per group; the groups are added at the end.
//
// With ROPE (one KV head per query head), the new token's rotary embedding and cache write are
// done here instead of by rotary_kv: every split rotates the query itself (as rotary_kv would:
// rotate-half on the first `rot` channels, cos / sin from the `rope` table), and the split that
// holds the last slot rotates the new key and writes it and the value into that slot before
// scoring (no other workgroup reads that slot).
//
// Defines: HD (head width), V4 (HD % 4 == 0: 16-byte loads), WG (lanes, ≥ HD4 and a power of
// two), MINCHUNK, MAXCHUNK, POS_BUF (len = pos[0] + 1, the position kept on the GPU by fused
// decoding, instead of p.len), ROPE.

struct P {
  len: u32,
  nh: u32,
  nkv: u32,
  cap: u32,
  nsplit: u32,
  scale: f32,
  rot: u32,      // ROPE: rotary channels per head
  ropeCap: u32,  //       positions in the rope table
}

#if V4
alias T = vec4<f32>;
const HD4 = ${HD}u / 4u;
fn dot4(a: T, b: T) -> f32 {
  return dot(a, b);
}
#else
alias T = f32;
const HD4 = ${HD}u;
fn dot4(a: T, b: T) -> f32 {
  return a * b;
}
#endif

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qkv: array<T>;
#if ROPE
@group(0) @binding(2) var<storage, read_write> kc: array<T>;
@group(0) @binding(3) var<storage, read_write> vc: array<T>;
@group(0) @binding(7) var<storage, read> rope: array<f32>;
#else
@group(0) @binding(2) var<storage, read> kc: array<T>;
@group(0) @binding(3) var<storage, read> vc: array<T>;
#endif
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#if POS_BUF
@group(0) @binding(6) var<storage, read> pos: array<u32>;
#endif

const HD = ${HD}u;
const WG = ${WG}u;
const MINCHUNK = ${MINCHUNK}u;
const MAXCHUNK = ${MAXCHUNK}u;
// Lane groups of the value pass.
const G = WG / HD4;

var<workgroup> qs: array<T, HD4>;
var<workgroup> sc: array<f32, MAXCHUNK>;
var<workgroup> red: array<f32, WG>;
var<workgroup> vsum: array<T, WG>;

fn reduce(lid: u32, v: f32, isMax: bool) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), isMax);
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

// Channel i of a qkv row at scalar index `base` (a head's start).
fn qkvAt(base: u32, i: u32) -> f32 {
#if V4
  let e = base + i;
  return qkv[e >> 2u][e & 3u];
#else
  return qkv[base + i];
#endif
}

// Channel i of the head at scalar index `base` of qkv, rotated to `position` (rotate-half on
// the first p.rot channels, as rotary_kv does).
fn rotated(base: u32, i: u32, position: u32) -> f32 {
  var v = qkvAt(base, i);
#if ROPE
  if (i < p.rot) {
    let half = p.rot / 2u;
    let j = i % half;
    let cs = rope[position * half + j];
    let sn = rope[(p.ropeCap + position) * half + j];
    if (i < half) {
      v = v * cs - qkvAt(base, i + half) * sn;
    } else {
      v = v * cs + qkvAt(base, i - half) * sn;
    }
  }
#endif
  return v;
}

// Channels 4c … 4c + 3 (V4) or channel c of a head, rotated.
fn rotatedT(base: u32, c: u32, position: u32) -> T {
#if V4
  return vec4<f32>(
    rotated(base, 4u * c, position),
    rotated(base, 4u * c + 1u, position),
    rotated(base, 4u * c + 2u, position),
    rotated(base, 4u * c + 3u, position),
  );
#else
  return rotated(base, c, position);
#endif
}

fn contextLen() -> u32 {
#if POS_BUF
  return pos[0] + 1u;
#else
  return p.len;
#endif
}

@compute @workgroup_size(WG)
fn attn_split(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let split = wid.x;
  let h = wid.y;
  let b = wid.z;
  let len = contextLen();
  let g = h / (p.nh / p.nkv);
  let rowLen4 = (p.nh + 2u * p.nkv) * HD4;
  let kvBase = (b * p.nkv + g) * p.cap * HD4;
  let chunk = max(MINCHUNK, (len + p.nsplit - 1u) / p.nsplit);
  let j0 = split * chunk;
  let n = select(0u, min(len - j0, chunk), j0 < len);
  let position = len - 1u;
  // Scalar index of this head's query in qkv.
  let qBase = (b * rowLen4 + h * HD4) * (HD / HD4);
  for (var c = lid; c < HD4; c += WG) {
    qs[c] = rotatedT(qBase, c, position) * p.scale;
  }
#if ROPE
  if (n > 0u && j0 + n == len) {
    // This split holds the new slot: its key (rotated) and value go into the cache first.
    let kBase = (b * rowLen4 + (p.nh + g) * HD4) * (HD / HD4);
    let vBase = (b * rowLen4 + (p.nh + p.nkv + g) * HD4) * (HD / HD4);
    let slot = kvBase + position * HD4;
    for (var c = lid; c < HD4; c += WG) {
      kc[slot + c] = rotatedT(kBase, c, position);
#if V4
      vc[slot + c] = vec4<f32>(
        qkvAt(vBase, 4u * c),
        qkvAt(vBase, 4u * c + 1u),
        qkvAt(vBase, 4u * c + 2u),
        qkvAt(vBase, 4u * c + 3u),
      );
#else
      vc[slot + c] = qkvAt(vBase, c);
#endif
    }
  }
  storageBarrier();
#endif
  workgroupBarrier();
  var mLocal = -3.0e38;
  for (var j = lid; j < n; j += WG) {
    let row = kvBase + (j0 + j) * HD4;
    var d0 = 0.0;
    var d1 = 0.0;
    for (var c = 0u; c + 1u < HD4; c += 2u) {
      d0 += dot4(qs[c], kc[row + c]);
      d1 += dot4(qs[c + 1u], kc[row + c + 1u]);
    }
    if (HD4 % 2u == 1u) {
      d0 += dot4(qs[HD4 - 1u], kc[row + HD4 - 1u]);
    }
    let dot = d0 + d1;
    sc[j] = dot;
    mLocal = max(mLocal, dot);
  }
  let m = reduce(lid, mLocal, true);
  var lLocal = 0.0;
  for (var j = lid; j < n; j += WG) {
    let e = exp(sc[j] - m);
    sc[j] = e;
    lLocal += e;
  }
  let l = reduce(lid, lLocal, false);
  // Values: lane group q takes slots q, q + G, …, four at a time.
  let c = lid % HD4;
  let q = lid / HD4;
  var a0 = T(0.0);
  var a1 = T(0.0);
  var a2 = T(0.0);
  var a3 = T(0.0);
  if (q < G) {
    let vb = kvBase + j0 * HD4 + c;
    var j = q;
    for (; j + 3u * G < n; j += 4u * G) {
      a0 += sc[j] * vc[vb + j * HD4];
      a1 += sc[j + G] * vc[vb + (j + G) * HD4];
      a2 += sc[j + 2u * G] * vc[vb + (j + 2u * G) * HD4];
      a3 += sc[j + 3u * G] * vc[vb + (j + 3u * G) * HD4];
    }
    for (; j < n; j += G) {
      a0 += sc[j] * vc[vb + j * HD4];
    }
  }
  vsum[lid] = (a0 + a1) + (a2 + a3);
  workgroupBarrier();
  let o = ((b * p.nh + h) * p.nsplit + split) * (HD + 2u);
  if (lid < HD4) {
    var acc = vsum[lid];
    for (var k = 1u; k < G; k++) {
      acc += vsum[k * HD4 + lid];
    }
#if V4
    part[o + 4u * lid] = acc.x;
    part[o + 4u * lid + 1u] = acc.y;
    part[o + 4u * lid + 2u] = acc.z;
    part[o + 4u * lid + 3u] = acc.w;
#else
    part[o + lid] = acc;
#endif
  }
  if (lid == 0u) {
    part[o + HD] = m;
    part[o + HD + 1u] = l;
  }
}

@compute @workgroup_size(WG)
fn attn_merge(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let h = wid.x;
  let b = wid.y;
  let base = (b * p.nh + h) * p.nsplit * (HD + 2u);
  var big = -3.0e38;
  for (var s = 0u; s < p.nsplit; s++) {
    big = max(big, part[base + s * (HD + 2u) + HD]);
  }
  var total = 0.0;
  for (var s = 0u; s < p.nsplit; s++) {
    let q = base + s * (HD + 2u);
    total += exp(part[q + HD] - big) * part[q + HD + 1u];
  }
  for (var c = lid; c < HD; c += WG) {
    var acc = 0.0;
    for (var s = 0u; s < p.nsplit; s++) {
      let q = base + s * (HD + 2u);
      acc += exp(part[q + HD] - big) * part[q + c];
    }
    out[(b * p.nh + h) * HD + c] = acc / total;
  }
}
