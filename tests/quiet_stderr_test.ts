// `--backend auto` probes WebGPU, whose Vulkan driver (Mesa's Wayland WSI, via libwayland) used to
// print `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` 2–4 times per run on a
// machine without a desktop session. Nothing but real errors may start with `error:`.
import assert from "node:assert/strict";
import { REPO_ROOT } from "./text_util.ts";

/** Runs `args` with XDG_RUNTIME_DIR removed from the environment (as on a server or in CI). */
async function runWithoutXdg(args: string[]) {
  const env = Deno.env.toObject();
  delete env.XDG_RUNTIME_DIR;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: REPO_ROOT,
    clearEnv: true,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

for (
  const [what, args] of [
    ["demo", ["demo.ts", "--backend", "auto", "--max-new-tokens", "4"]],
    ["cli", [
      "cli.ts",
      "--model",
      "models/demo",
      "--backend",
      "auto",
      "--prompt",
      "The",
      "--max-new-tokens",
      "4",
    ]],
    // Asking for webgpu by name creates the device (a second probe) even on a software adapter.
    ["demo webgpu", ["demo.ts", "--backend", "webgpu", "--max-new-tokens", "2"]],
  ] as const
) {
  Deno.test(`${what}: no spurious "error:" lines on stderr from WebGPU probing`, async () => {
    const r = await runWithoutXdg([...args]);
    // The webgpu run may fail where there is no adapter at all; its stderr must still be clean
    // of the probe's noise.
    if (what !== "demo webgpu") assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /XDG_RUNTIME_DIR/);
    if (r.code === 0) assert.doesNotMatch(r.stderr, /^error:/m, r.stderr);
  });
}
