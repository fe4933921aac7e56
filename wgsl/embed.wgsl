// Embedding gather: out[r, :] = table[ids[r], :] for the ids that fall in this part of the table
// (a table larger than one storage binding is split into row ranges, one dispatch each).
// Defines: F16 (table holds f16 pairs packed in u32).

struct P {
  rows: u32,     // number of ids
  d: u32,        // columns
  idBase: u32,   // first table row held by this part
  idEnd: u32,    // one past the last
  stride: u32,   // elements per table row (even for F16)
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#if F16
@group(0) @binding(2) var<storage, read> table: array<u32>;
#else
@group(0) @binding(2) var<storage, read> table: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let col = gid.x;
  if (col >= p.d) {
    return;
  }
  for (var r = gid.y; r < p.rows; r += nwg.y) {
    let id = ids[r];
    if (id < p.idBase || id >= p.idEnd) {
      continue;
    }
    let e = (id - p.idBase) * p.stride + col;
#if F16
    let v = unpack2x16float(table[e >> 1u]);
    out[r * p.d + col] = select(v.x, v.y, (e & 1u) == 1u);
#else
    out[r * p.d + col] = table[e];
#endif
  }
}
