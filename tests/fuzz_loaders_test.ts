/**
 * The loaders' fuzz smoke run: a few hundred seeded mutations per format (see fuzz_util.ts). Every
 * outcome must be a load with the config's shapes or a typed MambaError, each within 5 s, and the
 * process's peak memory must not grow by more than a few tens of MB over the run. The long run is
 * `deno task fuzz` (bench/fuzz_loaders.ts).
 */

import assert from "node:assert/strict";
import { FUZZ_FORMATS, fuzzCampaign, type FuzzFormat, fuzzOne, fuzzSeeds } from "./fuzz_util.ts";

const RUNS = 500;

/** Peak resident memory of this process (VmHWM), bytes. */
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
  return m ? Number(m[1]) * 1024 : 0;
}

Deno.test("fuzz: the seeds themselves load", async () => {
  const seeds = await fuzzSeeds();
  const inputs: [FuzzFormat, Uint8Array][] = [
    ["safetensors", seeds.safetensors],
    ...seeds.zip.map((z): [FuzzFormat, Uint8Array] => ["zip", z]),
    ["pickle", seeds.pickle],
    ["legacy", seeds.legacy],
    ["config", seeds.configJson],
  ];
  for (const [format, bytes] of inputs) {
    const r = await fuzzOne(format, bytes, seeds);
    assert.equal(r.outcome, "ok", `${format}: ${r.finding}`);
    assert.equal(r.finding, undefined);
  }
});

for (const format of FUZZ_FORMATS) {
  Deno.test(`fuzz: ${RUNS} mutations of ${format}: a load or a typed error, nothing else`, async () => {
    const seeds = await fuzzSeeds();
    const before = peakRss();
    const r = await fuzzCampaign(format, RUNS, 1, seeds);
    assert.deepEqual(r.findings, [], JSON.stringify(r.findings.slice(0, 5)));
    assert.equal(Object.values(r.outcomes).reduce((a, b) => a + b, 0), RUNS);
    // The mutations must reach the error paths, not just produce loads.
    assert.ok(Object.keys(r.outcomes).some((k) => k !== "ok"), JSON.stringify(r.outcomes));
    assert.ok(r.maxMs < 5000, `slowest run ${r.maxMs} ms`);
    const grown = peakRss() - before;
    assert.ok(grown < 64e6, `peak memory grew by ${grown} bytes`);
  });
}
