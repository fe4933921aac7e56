/**
 * Loading the WGSL sources of `wgsl/` and specialising them: a small preprocessor (`#if NAME`,
 * `#if !NAME`, `#elif`, `#else`, `#endif`, `#include FILE` and `#unroll VAR COUNT` …
 * `#endunroll` on their own lines, and `${NAME}` substitution), so that one file can be compiled
 * for f32 or f16 weights, a batch size, a state size, and so on. `#unroll` repeats its lines
 * COUNT times (a number or a defined name) with `${VAR}` replaced by 0, 1, …: private arrays
 * indexed only by such literals stay in registers (a dynamic index puts them in slow local
 * memory on some GPUs).
 *
 * @module
 */

import { BackendError } from "../../errors.ts";

/** Values a shader is specialised with. Booleans drive `#if`, everything is substituted. */
export type ShaderDefs = Readonly<Record<string, number | boolean>>;

/** The WGSL files of the backend, one concern per file. */
export const SHADER_FILES = [
  "embed",
  "add_norm",
  "matvec",
  "matmul",
  "matmul_tiled",
  "skinny",
  "skinny_regs",
  "skinny_io",
  "product_io",
  "conv1d",
  "selective_scan",
  "ssd_step",
  "ssd_chunked",
  "gated_norm",
  "sample",
  "util",
  // Transformer layers
  "rotary_kv",
  "attn_prefill",
  "attn_decode",
  "gelu",
  "add",
] as const;

/** Name of one WGSL file. */
export type ShaderFile = typeof SHADER_FILES[number];

const sources = new Map<ShaderFile, string>();

/** Reads every WGSL file once (from disk, or over the network when the module is remote). */
export async function loadShaderSources(): Promise<void> {
  await Promise.all(SHADER_FILES.map(async (name) => {
    if (sources.has(name)) return;
    const url = new URL(`../../../wgsl/${name}.wgsl`, import.meta.url);
    let text: string;
    try {
      if (url.protocol === "file:") text = await Deno.readTextFile(url);
      else {
        const res = await fetch(url);
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        text = await res.text();
      }
    } catch (e) {
      throw new BackendError(`cannot load shader ${url.href}: ${(e as Error).message}`);
    }
    sources.set(name, text);
  }));
}

/** Expands `#unroll VAR COUNT` … `#endunroll` blocks (nested ones too). */
function unroll(lines: string[], defs: ShaderDefs): string[] {
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const t = lines[i].trim();
    if (!t.startsWith("#unroll ")) {
      if (t === "#endunroll") throw new BackendError("#endunroll without #unroll");
      out.push(lines[i]);
      continue;
    }
    const [, name, countText] = t.split(/\s+/);
    const count = /^\d+$/.test(countText) ? Number(countText) : Number(defs[countText]);
    if (!name || !Number.isInteger(count) || count < 0) {
      throw new BackendError(`bad directive "${t}"`);
    }
    let depth = 1;
    let j = i + 1;
    for (; j < lines.length; j++) {
      const u = lines[j].trim();
      if (u.startsWith("#unroll ")) depth++;
      else if (u === "#endunroll" && --depth === 0) break;
    }
    if (depth) throw new BackendError("unterminated #unroll");
    const body = unroll(lines.slice(i + 1, j), defs);
    const re = new RegExp(`\\$\\{${name}\\}`, "g");
    for (let k = 0; k < count; k++) for (const l of body) out.push(l.replace(re, String(k)));
    i = j;
  }
  return out;
}

/** Applies the preprocessor to `src`. Exported for tests. */
export function preprocess(src: string, defs: ShaderDefs): string {
  const out: string[] = [];
  // Stack of [this branch active, some branch of this #if already taken, parent active].
  const stack: [boolean, boolean, boolean][] = [];
  const active = () => stack.length === 0 || stack[stack.length - 1][0];
  const test = (expr: string) => {
    const e = expr.trim();
    const neg = e.startsWith("!");
    const name = neg ? e.slice(1).trim() : e;
    const v = !!defs[name];
    return neg ? !v : v;
  };
  for (const line of src.split("\n")) {
    const t = line.trim();
    if (t.startsWith("#if ")) {
      const parent = active();
      const v = parent && test(t.slice(4));
      stack.push([v, v, parent]);
    } else if (t.startsWith("#elif ")) {
      const top = stack[stack.length - 1];
      if (!top) throw new BackendError("#elif without #if");
      const v = top[2] && !top[1] && test(t.slice(6));
      top[0] = v;
      top[1] ||= v;
    } else if (t === "#else") {
      const top = stack[stack.length - 1];
      if (!top) throw new BackendError("#else without #if");
      top[0] = top[2] && !top[1];
      top[1] = true;
    } else if (t === "#endif") {
      if (!stack.pop()) throw new BackendError("#endif without #if");
    } else if (t.startsWith("#include ")) {
      if (active()) {
        const name = t.slice(9).trim() as ShaderFile;
        const inc = sources.get(name);
        if (inc === undefined) throw new BackendError(`shader ${name} is not loaded`);
        out.push(preprocess(inc, defs));
      }
    } else if (active()) {
      out.push(line);
    }
  }
  if (stack.length) throw new BackendError("unterminated #if");
  return unroll(out, defs).join("\n").replace(/\$\{(\w+)\}/g, (_, name: string) => {
    const v = defs[name];
    if (v === undefined) throw new BackendError(`shader constant ${name} is not defined`);
    return typeof v === "boolean" ? (v ? "true" : "false") : String(v);
  });
}

/** A compiled compute pipeline and a small integer id (for cache keys). */
export interface Kernel {
  /** The pipeline. */
  readonly pipeline: GPUComputePipeline;
  /** Unique per pipeline. */
  readonly id: number;
  /** Where it came from (for error messages). */
  readonly label: string;
}

const pipelines = new WeakMap<GPUDevice, Map<string, Kernel>>();
let nextKernelId = 1;
/** Per device, the compile checks of the pipelines made since {@link checkCompiled} last ran. */
const compileChecks = new WeakMap<GPUDevice, Promise<string | null>[]>();

/**
 * The pipeline of `entry` in `file` specialised with `defs`, compiled once per device and
 * definition set.
 */
export function kernel(
  device: GPUDevice,
  file: ShaderFile,
  entry: string,
  defs: ShaderDefs = {},
): Kernel {
  let cache = pipelines.get(device);
  if (!cache) pipelines.set(device, cache = new Map());
  const keys = Object.keys(defs).sort();
  const key = `${file}:${entry}:${keys.map((k) => `${k}=${defs[k]}`).join(",")}`;
  let k = cache.get(key);
  if (!k) {
    const src = sources.get(file);
    if (src === undefined) throw new BackendError(`shader ${file} is not loaded`);
    const code = preprocess(src, defs);
    // A shader the device cannot compile is reported asynchronously, after work recorded with
    // it may already have run: its errors are caught in a scope and awaited before the next read
    // (checkCompiled), so that they fail the call rather than return garbage.
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ code, label: key });
    const pipeline = device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: entry },
      label: key,
    });
    const check = device.popErrorScope().then(
      (e) => (e ? `${key}: ${e.message}` : null),
      () => null, // the device was lost: reported as such elsewhere
    );
    let list = compileChecks.get(device);
    if (!list) compileChecks.set(device, list = []);
    list.push(check);
    k = { pipeline, id: nextKernelId++, label: key };
    cache.set(key, k);
  }
  return k;
}

/**
 * Waits for the compile checks of the pipelines made on `device` since the last call.
 *
 * @throws {BackendError} naming each kernel the device could not compile.
 */
export async function checkCompiled(device: GPUDevice): Promise<void> {
  const list = compileChecks.get(device);
  if (!list?.length) return;
  const failed = (await Promise.all(list.splice(0))).filter((m) => m !== null);
  if (failed.length) {
    throw new BackendError(`WebGPU could not compile a kernel:\n${failed.join("\n")}`);
  }
}
