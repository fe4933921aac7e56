/**
 * The loaders' long fuzz run (`deno task fuzz`): seeded mutations of a tiny checkpoint in each
 * format (safetensors; torch.save zip, stored / deflated / ZIP64; the pickle inside it; the legacy
 * stream; config.json), each loaded from memory. Prints, per format, the count, the time, the
 * slowest run and the outcomes by error class, and every finding (an untyped exception, a run
 * over 5 s, a load larger than twice its file) with the seed that reproduces it. Exits 1 on any
 * finding.
 *
 * Usage:
 *   deno task fuzz [--runs 100000] [--seed 1] [--format safetensors,zip,pickle,legacy,config]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { FUZZ_FORMATS, fuzzCampaign, type FuzzFormat, fuzzSeeds } from "../tests/fuzz_util.ts";
import { printUsage } from "./usage.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      runs: { type: "string", default: "100000" },
      seed: { type: "string", default: "1" },
      format: { type: "string", default: FUZZ_FORMATS.join(",") },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    await printUsage(import.meta.url);
    Deno.exit(0);
  }
  const runs = Number(values.runs);
  const seed = Number(values.seed);
  const formats = values.format.split(",") as FuzzFormat[];
  for (const f of formats) {
    if (!FUZZ_FORMATS.includes(f)) throw new Error(`unknown format ${f}`);
  }
  const seeds = await fuzzSeeds();
  let findings = 0;
  const hwm = () =>
    Number(/VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"))![1]) / 1024;
  for (const format of formats) {
    const r = await fuzzCampaign(format, runs, seed, seeds);
    findings += r.findings.length;
    console.log(JSON.stringify({
      format,
      runs: r.runs,
      seconds: +(r.ms / 1000).toFixed(1),
      perSecond: Math.round(r.runs / (r.ms / 1000)),
      slowestMs: +r.maxMs.toFixed(1),
      peakRssMB: Math.round(hwm()),
      outcomes: r.outcomes,
    }));
    for (const f of r.findings.slice(0, 20)) console.log("  finding:", JSON.stringify(f));
  }
  if (findings) {
    console.error(`${findings} findings`);
    Deno.exit(1);
  }
}
