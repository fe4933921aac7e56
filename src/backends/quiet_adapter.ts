/**
 * `navigator.gpu.requestAdapter()` without the `error: XDG_RUNTIME_DIR is invalid or not set in
 * the environment.` lines it prints on machines without a desktop session.
 *
 * Why they appear: Deno's WebGPU (wgpu) creates a Vulkan instance with every surface extension
 * the driver offers; Mesa's Wayland WSI then calls libwayland-client's `wl_display_connect`,
 * which writes that line to stderr (twice per adapter request) whenever `XDG_RUNTIME_DIR` is not
 * an absolute path. No surface is ever used here, so while the adapter is requested the variable
 * is pointed at a directory that holds no Wayland socket (the connection then fails quietly, as
 * it would have anyway) and removed again afterwards. Only when it was unset, and only with the
 * permission to change it already granted (never a prompt).
 *
 * @module
 */

const VAR = "XDG_RUNTIME_DIR";
/** An absolute path where no Wayland compositor listens. */
const NOWHERE = "/nonexistent/mamba-no-wayland";

function mayTouchEnv(): boolean {
  try {
    return Deno.permissions.querySync({ name: "env", variable: VAR }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * Runs `f` (which requests a WebGPU adapter or device) with `XDG_RUNTIME_DIR` set when it was
 * unset, so libwayland stays quiet; restores the environment afterwards.
 */
export async function quietly<T>(f: () => Promise<T>): Promise<T> {
  if (!mayTouchEnv() || Deno.env.get(VAR) !== undefined) return await f();
  Deno.env.set(VAR, NOWHERE);
  try {
    return await f();
  } finally {
    if (Deno.env.get(VAR) === NOWHERE) Deno.env.delete(VAR);
  }
}

/** `navigator.gpu.requestAdapter(options)`, quietly (see the module doc); null without WebGPU. */
export function requestAdapter(options?: GPURequestAdapterOptions): Promise<GPUAdapter | null> {
  const gpu = navigator.gpu;
  if (!gpu) return Promise.resolve(null);
  return quietly(() => gpu.requestAdapter(options));
}
