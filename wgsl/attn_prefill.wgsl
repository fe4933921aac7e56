// Causal attention of the L new tokens of each sequence over its KV cache, tiled in the manner
// of flash attention: a workgroup takes BQ query rows of one head of one sequence and walks the
// key slots in tiles of BK, staged in workgroup memory (keys, then values, in one tile buffer).
// Each thread owns one query row and keeps a running max `m`, sum `l` and output accumulator
// (online softmax), so the L×L score matrix never exists. Query t (at position pos + t) sees
// slots 0 … pos + t. KV head of query head h: h / (nh / nkv). Cache layout [batch, nkv, cap, HD].
//
// Defines: HD (head width), BK (slots per tile; BK·HD floats fit in workgroup memory).

struct P {
  seqLen: u32,
  pos: u32,
  nh: u32,
  nkv: u32,
  cap: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const HD = ${HD}u;
const BK = ${BK}u;
const BQ = 64u;

var<workgroup> tile: array<f32, BK * HD>;

@compute @workgroup_size(BQ)
fn attn_prefill(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let h = wid.y;
  let b = wid.z;
  let t = wid.x * BQ + lid;
  let valid = t < p.seqLen;
  let g = h / (p.nh / p.nkv);
  let rowLen = (p.nh + 2u * p.nkv) * HD;
  let kvBase = (b * p.nkv + g) * p.cap * HD;
  var q: array<f32, HD>;
  var acc: array<f32, HD>;
  if (valid) {
    let qo = (b * p.seqLen + t) * rowLen + h * HD;
    for (var c = 0u; c < HD; c++) {
      q[c] = qkv[qo + c] * p.scale;
      acc[c] = 0.0;
    }
  }
  var m = 0.0;
  var l = 0.0;
  var seen = false;
  let myLast = p.pos + t;
  // The last slot any row of this tile sees.
  let last = p.pos + min(wid.x * BQ + BQ, p.seqLen) - 1u;
  var s: array<f32, BK>;
  for (var j0 = 0u; j0 <= last; j0 += BK) {
    for (var e = lid; e < BK * HD; e += BQ) {
      let j = j0 + e / HD;
      tile[e] = select(0.0, kc[kvBase + j * HD + e % HD], j <= last);
    }
    workgroupBarrier();
    var tmax = 0.0;
    var any = false;
    for (var jj = 0u; jj < BK; jj++) {
      let j = j0 + jj;
      if (valid && j <= myLast) {
        var dot = 0.0;
        for (var c = 0u; c < HD; c++) {
          dot += q[c] * tile[jj * HD + c];
        }
        s[jj] = dot;
        tmax = select(dot, max(tmax, dot), any);
        any = true;
      }
    }
    workgroupBarrier();
    for (var e = lid; e < BK * HD; e += BQ) {
      let j = j0 + e / HD;
      tile[e] = select(0.0, vc[kvBase + j * HD + e % HD], j <= last);
    }
    workgroupBarrier();
    if (any) {
      let mNew = select(tmax, max(m, tmax), seen);
      let corr = select(0.0, exp(m - mNew), seen);
      l *= corr;
      for (var c = 0u; c < HD; c++) {
        acc[c] *= corr;
      }
      for (var jj = 0u; jj < BK; jj++) {
        if (j0 + jj <= myLast) {
          let pj = exp(s[jj] - mNew);
          l += pj;
          for (var c = 0u; c < HD; c++) {
            acc[c] += pj * tile[jj * HD + c];
          }
        }
      }
      m = mNew;
      seen = true;
    }
    workgroupBarrier();
  }
  if (valid) {
    let o = (b * p.seqLen + t) * p.nh * HD + h * HD;
    for (var c = 0u; c < HD; c++) {
      out[o + c] = acc[c] / l;
    }
  }
}
