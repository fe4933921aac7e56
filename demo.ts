/**
 * The library's first command: stream text from the small Mamba-2 model bundled in
 * `models/demo/` (trained on State of the Union addresses and Moby-Dick, byte-level), on the
 * best backend present. No download, no GPU needed.
 *
 * ```sh
 * deno task demo
 * deno task demo --prompt "It is a truth" --backend wasm --max-new-tokens 400
 * ```
 *
 * @example
 * ```ts ignore
 * import { runDemo } from "@mamba/mamba/demo";
 * await runDemo(["--prompt", "Call me Ishmael.", "--seed", "7"]);
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type BackendChoice, MambaLM } from "./mod.ts";

const HELP = `Stream text from the bundled demo model.

  deno task demo [--prompt TEXT] [--backend ref|wasm|webgpu|auto] [--max-new-tokens N]
                 [--temperature T] [--top-p P] [--seed N]

Text goes to stdout; the backend and tokens/s go to stderr.`;

const DEFAULT_PROMPT = "Mr. Speaker, the state of our Union is";

/** Runs the demo with command-line `args`; returns the process exit code. */
export async function runDemo(args: string[]): Promise<number> {
  let v;
  try {
    v = parseArgs({
      args,
      options: {
        prompt: { type: "string", default: DEFAULT_PROMPT },
        backend: { type: "string", default: "auto" },
        "max-new-tokens": { type: "string", default: "300" },
        temperature: { type: "string", default: "0.7" },
        "top-p": { type: "string", default: "0.95" },
        seed: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    console.error(`demo: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (v.help) {
    console.log(HELP);
    return 0;
  }
  const backend = v.backend as BackendChoice;
  if (!["ref", "wasm", "webgpu", "auto"].includes(backend)) {
    console.error(`demo: --backend must be ref, wasm, webgpu or auto, got "${backend}"`);
    return 2;
  }
  const num = (name: string, s: string | undefined) => {
    const n = Number(s);
    if (s === undefined || s.trim() === "" || !Number.isFinite(n)) {
      throw new RangeError(`--${name} must be a number, got "${s}"`);
    }
    return n;
  };
  try {
    const t0 = performance.now();
    const lm = await MambaLM.load(new URL("./models/demo/", import.meta.url), { backend });
    const loadMs = performance.now() - t0;
    console.error(`[demo: backend ${lm.backendName}, model loaded in ${loadMs.toFixed(0)} ms]`);
    const enc = new TextEncoder();
    await Deno.stdout.write(enc.encode(v.prompt));
    let n = 0;
    const t1 = performance.now();
    for await (
      const t of lm.generate(v.prompt, {
        maxNewTokens: num("max-new-tokens", v["max-new-tokens"]),
        temperature: num("temperature", v.temperature),
        topP: num("top-p", v["top-p"]),
        seed: v.seed === undefined ? undefined : num("seed", v.seed),
      })
    ) {
      n++;
      await Deno.stdout.write(enc.encode(t.text));
    }
    const s = (performance.now() - t1) / 1000;
    await Deno.stdout.write(enc.encode("\n"));
    console.error(
      `[demo: ${n} tokens in ${s.toFixed(2)} s, ${
        (n / s).toFixed(1)
      } tok/s, backend ${lm.backendName}]`,
    );
    lm.dispose();
    return 0;
  } catch (e) {
    console.error(`demo: ${(e as Error).message}`);
    return e instanceof RangeError ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await runDemo(Deno.args));
