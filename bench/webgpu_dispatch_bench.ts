/**
 * What one dispatch costs on this WebGPU device, apart from its work: chains of trivial
 * dispatches in one compute pass, timed by the pass's timestamps, with and without data hazards
 * between them (wgpu puts a pipeline barrier between dispatches that write and then read the same
 * buffer), with one or many bindings, and with one pass per dispatch. This is the floor under
 * every decode step, which is a chain of dependent kernels.
 *
 * ```sh
 * deno run -A bench/webgpu_dispatch_bench.ts [--n 400] [--json out.jsonl]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { gpuContext } from "../src/backends/webgpu/device.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: { n: { type: "string", default: "400" }, json: { type: "string" } },
});
const N = Number(opt.n);
const ctx = await gpuContext();
const dev = ctx.device;
if (!ctx.timestamps) {
  console.log("no timestamp-query: nothing to measure");
  Deno.exit(0);
}
console.log(`adapter: ${ctx.adapterInfo}`);

/** A kernel with `nb` read_write storage bindings; lane 0 of workgroup 0 bumps word 0 of each. */
function kernel(nb: number, wg: number, readOnly: boolean): GPUComputePipeline {
  const decl = Array.from(
    { length: nb },
    (_, i) =>
      `@group(0) @binding(${i}) var<storage, ${
        readOnly ? "read" : "read_write"
      }> b${i}: array<u32>;`,
  ).join("\n");
  const body = Array.from(
    { length: nb },
    (_, i) => readOnly ? `acc += b${i}[0];` : `b${i}[0] += 1u;`,
  ).join("\n");
  const code = `${decl}
${readOnly ? "var<private> acc: u32;" : ""}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  if (lid == 0u && wid.x == 0u) {
    ${body}
  }
}`;
  return dev.createComputePipeline({
    layout: "auto",
    compute: { module: dev.createShaderModule({ code }), entryPoint: "main" },
  });
}

const buffers = Array.from(
  { length: 64 },
  () => dev.createBuffer({ size: 256, usage: GPUBufferUsage.STORAGE }),
);
const query = dev.createQuerySet({ type: "timestamp", count: 2 * 64 });
const resolve = dev.createBuffer({
  size: 16 * 64,
  usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
});
const staging = dev.createBuffer({
  size: 16 * 64,
  usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
});

interface Case {
  name: string;
  nb: number;
  wg: number;
  groups: number;
  readOnly?: boolean;
  /** Rotate over this many buffer sets (no hazard between neighbours when > 1). */
  rotate?: number;
  passPerDispatch?: boolean;
}

/** GPU µs per dispatch for one case (best of 3 rounds). */
async function run(c: Case): Promise<number> {
  const pipe = kernel(c.nb, c.wg, !!c.readOnly);
  const rot = c.rotate ?? 1;
  const groups = Array.from({ length: rot }, (_, r) =>
    dev.createBindGroup({
      layout: pipe.getBindGroupLayout(0),
      entries: Array.from({ length: c.nb }, (_, i) => ({
        binding: i,
        resource: { buffer: buffers[(r * c.nb + i) % buffers.length] },
      })),
    }));
  let best = Infinity;
  for (let round = 0; round < 4; round++) {
    const enc = dev.createCommandEncoder();
    if (c.passPerDispatch) {
      // Timestamps only around the first and last pass: the whole chain is between them.
      for (let i = 0; i < N; i++) {
        const tw: GPUComputePassTimestampWrites | undefined = i === 0
          ? { querySet: query, beginningOfPassWriteIndex: 0 }
          : i === N - 1
          ? { querySet: query, endOfPassWriteIndex: 1 }
          : undefined;
        const pass = enc.beginComputePass(tw ? { timestampWrites: tw } : {});
        pass.setPipeline(pipe);
        pass.setBindGroup(0, groups[i % rot]);
        pass.dispatchWorkgroups(c.groups);
        pass.end();
      }
    } else {
      const pass = enc.beginComputePass({
        timestampWrites: { querySet: query, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
      });
      pass.setPipeline(pipe);
      for (let i = 0; i < N; i++) {
        pass.setBindGroup(0, groups[i % rot]);
        pass.dispatchWorkgroups(c.groups);
      }
      pass.end();
    }
    enc.resolveQuerySet(query, 0, 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, staging, 0, 16);
    dev.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ, 0, 16);
    const t = new BigUint64Array(staging.getMappedRange(0, 16).slice(0));
    staging.unmap();
    if (round > 0) best = Math.min(best, Number(t[1] - t[0]) / 1e3 / N);
  }
  return best;
}

const cases: Case[] = [
  { name: "1 binding, dependent (RW same buffer), 1 WG", nb: 1, wg: 64, groups: 1 },
  { name: "1 binding, dependent, 132 WGs of 256", nb: 1, wg: 256, groups: 132 },
  { name: "1 binding, dependent, 1024 WGs of 256", nb: 1, wg: 256, groups: 1024 },
  { name: "1 binding, dependent, 8192 WGs of 256", nb: 1, wg: 256, groups: 8192 },
  { name: "8 bindings, dependent, 1 WG", nb: 8, wg: 64, groups: 1 },
  { name: "16 bindings, dependent, 1 WG", nb: 16, wg: 64, groups: 1 },
  {
    name: "1 binding, rotating 64 buffers (no neighbour hazard), 1 WG",
    nb: 1,
    wg: 64,
    groups: 1,
    rotate: 64,
  },
  { name: "1 binding read-only (no hazard), 1 WG", nb: 1, wg: 64, groups: 1, readOnly: true },
  { name: "1 binding read-only, 1024 WGs of 256", nb: 1, wg: 256, groups: 1024, readOnly: true },
  {
    name: "1 binding, dependent, pass per dispatch",
    nb: 1,
    wg: 64,
    groups: 1,
    passPerDispatch: true,
  },
];
const rows: Record<string, unknown>[] = [];
for (const c of cases) {
  const us = await run(c);
  console.log(`${us.toFixed(2).padStart(8)} µs/dispatch  ${c.name}`);
  rows.push({ case: c.name, usPerDispatch: us, n: N, adapter: ctx.adapterInfo });
}
if (opt.json) {
  await Deno.writeTextFile(opt.json, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}
