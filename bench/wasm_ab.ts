/**
 * Same-process A/B of the `wasm` backend from two checkouts of this repository: random weights in
 * the published shapes, batch 1, greedy; prefill-512 and decode (`lm.step` with a host argmax),
 * the two backends alternating round after round (the order flips every round), best of the
 * rounds kept. It prints the process's CPU time and the wall time of each; with one thread the
 * CPU time is the work (other processes on a shared machine do not count in it), with several
 * threads the wall time is what counts (the ranks spin while they wait, which CPU time counts),
 * and it is only meaningful while no other process takes a core.
 *
 * ```sh
 * git archive BASE | tar -x -C /tmp/base    # a checkout of the baseline, outside the repo
 * deno run -A bench/wasm_ab.ts --a /tmp/base --b . --model mamba2-130m --weights f16,q8 --threads 2
 * ```
 *
 * Options: `--a DIR`, `--b DIR` (checkouts; default `.` for both), `--model` (default
 * mamba2-130m), `--weights f32,f16,q8`, `--threads N` (default 1), `--rounds N` (default 5),
 * `--what prefill,decode`, `--decode N` (tokens per timed decode round, default 32).
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { printUsage } from "./usage.ts";
import type { WasmWeights } from "../src/backends/wasm/options.ts";

/** The modules of one checkout (typed as this checkout's: both have the same API). */
interface Side {
  mod: typeof import("../mod.ts");
  testing: typeof import("../testing.ts");
  backend: typeof import("../src/backends/wasm/backend.ts");
}

async function load(dir: string): Promise<Side> {
  const url = (p: string) => pathToFileURL(resolve(dir, p)).href;
  return {
    mod: await import(url("mod.ts")),
    testing: await import(url("testing.ts")),
    backend: await import(url("src/backends/wasm/backend.ts")),
  };
}

/** CPU time of the process (all threads), ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function argmax(l: Float32Array, n: number): number {
  let b = 0;
  for (let i = 1; i < n; i++) if (l[i] > l[b]) b = i;
  return b;
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean", short: "h" },
      a: { type: "string", default: "." },
      b: { type: "string", default: "." },
      model: { type: "string", default: "mamba2-130m" },
      weights: { type: "string", default: "f32,f16,q8" },
      threads: { type: "string", default: "1" },
      rounds: { type: "string", default: "5" },
      what: { type: "string", default: "prefill,decode" },
      decode: { type: "string", default: "32" },
    },
  });
  if (v.help) {
    await printUsage(import.meta.url);
    Deno.exit(0);
  }
  const dirs = [v.a!, v.b!];
  const sides = [await load(dirs[0]), await load(dirs[1])];
  const threads = Number(v.threads);
  const rounds = Number(v.rounds);
  const nDecode = Number(v.decode);
  const what = v.what!.split(",");
  const config = sides[0].mod.parseConfig(sides[0].testing.PUBLIC_CONFIGS[v.model!]);
  const weights = sides[0].testing.randomWeights(config);
  const ids = Array.from({ length: 512 }, (_, i) => (i * 7919 + 13) % config.vocabSize);
  console.log(
    `# ${v.model}, ${threads} thread(s), ${rounds} rounds; a = ${dirs[0]}, b = ${dirs[1]}`,
  );
  console.log(
    "| weights | what | a: CPU ms | a: wall ms | b: CPU ms | b: wall ms | b ÷ a speed (CPU) | (wall) |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const dtype of v.weights!.split(",") as WasmWeights[]) {
    const lms = [];
    for (const s of sides) {
      const be = await s.backend.WasmBackend.create({ config, weights }, {
        threads,
        weights: dtype,
      });
      lms.push(new s.mod.MambaLM(config, be));
    }
    const best = lms.map(() => ({ pc: Infinity, pw: Infinity, dc: Infinity, dw: Infinity }));
    const states = lms.map((lm) => lm.createState(1));
    const logits: Float32Array[] = [];
    for (let i = 0; i < 2; i++) {
      await lms[i].prefill(lms[i].createState(1), [ids.slice(0, 16)]);
      logits.push(await lms[i].prefill(states[i], [[1, 2, 3]]));
    }
    for (let r = 0; r < rounds; r++) {
      for (let j = 0; j < 2; j++) {
        const i = (j + r) % 2;
        const lm = lms[i];
        if (what.includes("prefill")) {
          const st = lm.createState(1);
          const c0 = cpuMs(), t0 = performance.now();
          await lm.prefill(st, [ids]);
          best[i].pc = Math.min(best[i].pc, cpuMs() - c0);
          best[i].pw = Math.min(best[i].pw, performance.now() - t0);
        }
        if (what.includes("decode")) {
          let l = logits[i];
          const c0 = cpuMs(), t0 = performance.now();
          for (let s = 0; s < nDecode; s++) {
            l = await lm.step(states[i], [argmax(l, config.vocabSize)]);
          }
          best[i].dc = Math.min(best[i].dc, (cpuMs() - c0) / nDecode);
          best[i].dw = Math.min(best[i].dw, (performance.now() - t0) / nDecode);
          logits[i] = l;
        }
      }
    }
    const f = (x: number) => x.toFixed(3);
    const [a, b] = best;
    if (what.includes("prefill")) {
      console.log(
        `| ${dtype} | prefill-512 (ms) | ${f(a.pc)} | ${f(a.pw)} | ${f(b.pc)} | ${f(b.pw)} | ${
          (a.pc / b.pc).toFixed(3)
        }× | ${(a.pw / b.pw).toFixed(3)}× |`,
      );
    }
    if (what.includes("decode")) {
      console.log(
        `| ${dtype} | decode (ms/token) | ${f(a.dc)} | ${f(a.dw)} | ${f(b.dc)} | ${f(b.dw)} | ${
          (a.dc / b.dc).toFixed(3)
        }× | ${(a.dw / b.dw).toFixed(3)}× |`,
      );
    }
    for (const lm of lms) lm.dispose();
  }
}
