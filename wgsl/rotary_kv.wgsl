// The rotary embedding of the new queries and keys, and the new keys and values written into
// their KV-cache slots. One workgroup per token row; row b·L + t of qkv is token t of sequence b,
// at position pos + t, laid out [q (NH·HD) | k (NKV·HD) | v (NKV·HD)].
//
// Rotate-half form on the first `rot` channels of each head: channel i < rot/2 pairs with
// i + rot/2, turned by the angle of position and i, whose cosine and sine come from the `rope`
// table ([ropeCap, rot/2] cosines, then as many sines; computed on the host in float32 like the
// reference, since WGSL's cos/sin are only accurate near zero). Queries are rotated in place;
// keys are rotated on their way into the cache (qkv's keys are not read again), so no thread
// reads what another writes. Cache layout: [batch, NKV, cap, HD].
//
// Defines: POS_BUF (the position of the first row is pos[0], kept on the GPU by fused decoding,
// instead of p.pos; `advance_pos` moves it on by one at the end of each decoding step).

struct P {
  rows: u32,
  seqLen: u32,
  pos: u32,
  nh: u32,
  nkv: u32,
  hd: u32,
  rot: u32,
  cap: u32,
  ropeCap: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> kc: array<f32>;
@group(0) @binding(3) var<storage, read_write> vc: array<f32>;
@group(0) @binding(4) var<storage, read> rope: array<f32>;
#if POS_BUF
@group(0) @binding(5) var<storage, read_write> pos: array<u32>;
#endif

// A decoded token is one workgroup: wide, so that it takes a few rounds, not dozens.
const WG = 256u;

@compute @workgroup_size(WG)
fn rotary_kv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let row = wid.x + wid.y * 65535u;
  if (row >= p.rows) {
    return;
  }
  let b = row / p.seqLen;
  let t = row % p.seqLen;
#if POS_BUF
  let position = pos[0] + t;
#else
  let position = p.pos + t;
#endif
  let half = p.rot / 2u;
  let rowLen = (p.nh + 2u * p.nkv) * p.hd;
  let base = row * rowLen;
  let cosBase = position * half;
  let sinBase = p.ropeCap * half + position * half;
  // Queries: each pair (i, i + half) belongs to one thread.
  for (var e = lid; e < p.nh * half; e += WG) {
    let h = e / half;
    let i = e % half;
    let o = base + h * p.hd + i;
    let a = qkv[o];
    let c = qkv[o + half];
    let cs = rope[cosBase + i];
    let sn = rope[sinBase + i];
    qkv[o] = a * cs - c * sn;
    qkv[o + half] = c * cs + a * sn;
  }
  // Keys (rotated on the way) and values into slot `position` of each KV head.
  for (var e = lid; e < p.nkv * p.hd; e += WG) {
    let g = e / p.hd;
    let i = e % p.hd;
    let src = base + p.nh * p.hd + e;
    var k = qkv[src];
    if (i < p.rot) {
      let j = i % half;
      let cs = rope[cosBase + j];
      let sn = rope[sinBase + j];
      if (i < half) {
        k = k * cs - qkv[src + half] * sn;
      } else {
        k = k * cs + qkv[src - half] * sn;
      }
    }
    let slot = ((b * p.nkv + g) * p.cap + position) * p.hd + i;
    kc[slot] = k;
    vc[slot] = qkv[src + p.nkv * p.hd];
  }
}

#if POS_BUF
@compute @workgroup_size(1)
fn advance_pos() {
  pos[0] += 1u;
}
#endif
