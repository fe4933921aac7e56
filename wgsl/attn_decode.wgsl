// Decoding attention (one new token per sequence) over a long KV cache, split in the manner of
// flash-decoding: `attn_split` gives each workgroup SPLIT slots of one head of one sequence; it
// scores them, and writes the unnormalised partial Σ e^(s − m)·v with its max m and sum l.
// `attn_merge` then combines the partials of each (sequence, head):
//   out = Σ_s e^(m_s − M)·acc_s / Σ_s e^(m_s − M)·l_s,  M = max_s m_s.
// The query of sequence b is row b of qkv ([q (nh·HD) | k | v]); it sees slots 0 … len − 1.
// Partials: [batch, nh, nsplit, HD + 2]. Cache layout [batch, nkv, cap, HD].
//
// Defines: HD (head width), SPLIT (slots per split).

struct P {
  len: u32,
  nh: u32,
  nkv: u32,
  cap: u32,
  nsplit: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const HD = ${HD}u;
const SPLIT = ${SPLIT}u;
const WG = 64u;

var<workgroup> qs: array<f32, HD>;
var<workgroup> sc: array<f32, SPLIT>;
var<workgroup> red: array<f32, WG>;

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

@compute @workgroup_size(WG)
fn attn_split(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let split = wid.x;
  let h = wid.y;
  let b = wid.z;
  let g = h / (p.nh / p.nkv);
  let rowLen = (p.nh + 2u * p.nkv) * HD;
  let kvBase = (b * p.nkv + g) * p.cap * HD;
  let j0 = split * SPLIT;
  let n = min(p.len - j0, SPLIT);
  for (var c = lid; c < HD; c += WG) {
    qs[c] = qkv[b * rowLen + h * HD + c] * p.scale;
  }
  workgroupBarrier();
  var mLocal = -3.0e38;
  for (var j = lid; j < n; j += WG) {
    var dot = 0.0;
    for (var c = 0u; c < HD; c++) {
      dot += qs[c] * kc[kvBase + (j0 + j) * HD + c];
    }
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
  let o = ((b * p.nh + h) * p.nsplit + split) * (HD + 2u);
  for (var c = lid; c < HD; c += WG) {
    var acc = 0.0;
    for (var j = 0u; j < n; j++) {
      acc += sc[j] * vc[kvBase + (j0 + j) * HD + c];
    }
    part[o + c] = acc;
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
