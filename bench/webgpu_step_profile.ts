/**
 * Where the time of one fused decode step goes on the GPU, measured in place: the step's
 * recorded dispatches are replayed back to back (as `generate` runs them) and timed by the
 * timestamps of one pass around many steps, then replayed again without each kernel group (its
 * marginal cost) and with only that group. Per-dispatch timestamps (`webgpu_bench.ts --profile`)
 * put every dispatch in a pass of its own, which adds ~5 µs to each; this does not.
 *
 * ```sh
 * deno run -A bench/webgpu_step_profile.ts --model mamba-130m --dtype f16 [--reps 50] [--json f]
 * deno run -A bench/webgpu_step_profile.ts --batch 64 [--skinny-min 16] [--xproj-split 2]
 * ```
 *
 * `--skinny-min`, `--scan-lanes`, `--res-epi`, `--rotate`, `--xproj-split` and `--regs` set the
 * backend's `skinnyMinRows`, `scanStepLanes`, `residualInOutProj`, `skinnyRotate`, `xProjSplit`
 * and `skinnyRegs` (see `webgpu_bench.ts`);
 * `--regs-tile tn=…,nc=…,kl=…,mb=…,kp=…` its `regsShape`, `--regs-lm-head 0|1` its `regsLmHead`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { validateSamplingOptions } from "../src/sampling.ts";
import type { WebGpuBackend } from "../src/backends/webgpu/backend.ts";
import type { Command } from "../src/backends/webgpu/recorder.ts";
import { parseFields, randomGpuBackend, REGS_FIELDS, timeReplay } from "./webgpu_util.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", multiple: true, default: ["mamba-130m"] },
    dtype: { type: "string", multiple: true, default: ["f16"] },
    batch: { type: "string", default: "1" },
    reps: { type: "string", default: "50" },
    "no-labels": { type: "boolean" },
    json: { type: "string" },
    "skinny-min": { type: "string" },
    "scan-lanes": { type: "string" },
    "res-epi": { type: "string" },
    rotate: { type: "string" },
    "xproj-split": { type: "string" },
    regs: { type: "string" },
    "regs-tile": { type: "string" },
    "regs-lm-head": { type: "string" },
  },
});
const backendOptions = {
  ...(opt["skinny-min"] ? { skinnyMinRows: Number(opt["skinny-min"]) } : {}),
  ...(opt["scan-lanes"] ? { scanStepLanes: opt["scan-lanes"] !== "0" } : {}),
  ...(opt["res-epi"] ? { residualInOutProj: opt["res-epi"] !== "0" } : {}),
  ...(opt.rotate ? { skinnyRotate: opt.rotate !== "0" } : {}),
  ...(opt["xproj-split"] ? { xProjSplit: Number(opt["xproj-split"]) } : {}),
  ...(opt.regs ? { skinnyRegs: opt.regs !== "0" } : {}),
  ...(opt["regs-lm-head"] ? { regsLmHead: opt["regs-lm-head"] !== "0" } : {}),
  ...(opt["regs-tile"]
    ? { regsShape: parseFields(opt["regs-tile"], REGS_FIELDS, "--regs-tile") }
    : {}),
};
const reps = Number(opt.reps);
const batch = Number(opt.batch);
const rows: Record<string, unknown>[] = [];

/** GPU µs per replay of `cmds`, `reps` times in one pass (best of 3 after a warm-up). */
function time(be: WebGpuBackend, cmds: readonly Command[], passEvery = 0): Promise<number> {
  return timeReplay(be.rec.device, cmds, reps, passEvery);
}

/** A kernel label without its false / zero defines. */
const short = (label: string) => label.replace(/[A-Z0-9_]+=(false|0)(,|$)/g, "").slice(0, 120);

for (const name of opt.model) {
  for (const dtype of opt.dtype as ("f32" | "f16")[]) {
    const { config, be } = await randomGpuBackend(name, dtype, backendOptions);
    const state = be.createState(batch);
    const plan = be.decodePlan(batch);
    const sampling = validateSamplingOptions({ topK: 1 });
    const ids = new Int32Array(batch).fill(1);
    for await (const _ of plan.run(state, ids, 16, { sampling })) { /* warm-up */ }
    const vocab = config.paddedVocabSize;
    const step = be.rec.capture(() => plan.encodeStep(state, 0, sampling, vocab));
    const labels = [...new Set(step.map((c) => c.label))];
    const full = await time(be, step);
    const perPass = await time(be, step, 1);
    console.log(
      `${name} ${dtype} b${batch}: ${step.length} dispatches, ${full.toFixed(1)} µs/step ` +
        `(${(1e6 / full).toFixed(0)} tok/s GPU); one pass per dispatch: ${perPass.toFixed(1)} µs`,
    );
    rows.push({ model: name, dtype, batch, what: "step", dispatches: step.length, us: full });
    for (const label of opt["no-labels"] ? [] : labels) {
      const n = step.filter((c) => c.label === label).length;
      const without = await time(be, step.filter((c) => c.label !== label));
      const only = await time(be, step.filter((c) => c.label === label));
      console.log(
        `  ${(full - without).toFixed(1).padStart(7)} µs marginal  ${
          only.toFixed(1).padStart(7)
        } µs alone` +
          `  ×${String(n).padStart(3)}  ${short(label)}`,
      );
      rows.push({ model: name, dtype, batch, label, n, marginalUs: full - without, aloneUs: only });
    }
    // The host side: encoding a step (the CPU cost the GPU must not wait for), and the wall
    // clock of fused decoding at a few block sizes (last: a larger block reallocates the plan's
    // output buffer, which the captured `step` above writes into).
    const dev = be.rec.device;
    let enc = Infinity;
    for (let round = 0; round < 5; round++) {
      const t0 = performance.now();
      const e = dev.createCommandEncoder();
      const pass = e.beginComputePass();
      for (let r = 0; r < 64; r++) {
        for (const c of step) {
          pass.setPipeline(c.pipeline);
          pass.setBindGroup(0, c.group);
          pass.dispatchWorkgroups(c.x, c.y, c.z);
        }
      }
      pass.end();
      dev.queue.submit([e.finish()]);
      enc = Math.min(enc, (performance.now() - t0) * 1e3 / 64);
      await dev.queue.onSubmittedWorkDone();
    }
    console.log(`  host: encode + submit ${enc.toFixed(1)} µs/step`);
    rows.push({ model: name, dtype, batch, what: "host encode", us: enc });
    // Block sizes, steps per submission (and in a block's first one), blocks in flight; two
    // rounds, so that a drift of the clock shows.
    const variants = [
      { blockSize: 64, submitSteps: 4, first: 4, inFlight: 2 },
      { blockSize: 64, submitSteps: 4, first: 1, inFlight: 2 },
      { blockSize: 64, submitSteps: 4, first: 2, inFlight: 2 },
      { blockSize: 64, submitSteps: 8, first: 1, inFlight: 2 },
      { blockSize: 64, submitSteps: 4, first: 1, inFlight: 3 },
      { blockSize: 256, submitSteps: 8, first: 8, inFlight: 2 },
      { blockSize: 256, submitSteps: 8, first: 1, inFlight: 2 },
    ];
    for (const { blockSize, submitSteps, first, inFlight } of [...variants, ...variants]) {
      plan.submitSteps = submitSteps;
      plan.firstSubmitSteps = first;
      plan.inFlight = inFlight;
      // The whole call: timed from after the first block, the rate would count the blocks that
      // were already in flight then as free (3 in flight read 5% "faster" than 2 that way, and
      // the same over the whole call).
      const n = 1024;
      const t0 = performance.now();
      for await (const _ of plan.run(state, ids, n, { sampling, blockSize })) { /* drain */ }
      const us = (performance.now() - t0) * 1e3 / n;
      const what =
        `decode wall: block ${blockSize}, submit every ${submitSteps} (first ${first}), ` +
        `${inFlight} in flight`;
      console.log(`  ${what}: ${us.toFixed(1)} µs/token (${(1e6 / us).toFixed(0)} tok/s)`);
      rows.push({ model: name, dtype, batch, what, us });
    }
    rows.push({ model: name, dtype, batch, what: "step, pass per dispatch", us: perPass });
    be.freeState(state);
    be.dispose();
  }
}
if (opt.json) {
  await Deno.writeTextFile(opt.json, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}
