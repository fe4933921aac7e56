/**
 * Which WebGPU adapter the GPU test suites may use.
 *
 * A machine without GPU drivers may still offer a WebGPU adapter: a software fallback (Mesa's
 * llvmpipe through OpenGL when there is no Vulkan driver, or through lavapipe). Through OpenGL the
 * GPU suites take over 25 minutes, so on a fallback adapter (`adapter.info.isFallbackAdapter`)
 * they are skipped and say so, unless `MAMBA_TEST_WEBGPU=1` asks to run them anyway (lavapipe,
 * Mesa's software Vulkan, runs them in a few minutes).
 */

/** The adapter a GPU suite should test on, or `null` (with a line on stderr saying why). */
export async function webgpuTestAdapter(suite: string): Promise<GPUAdapter | null> {
  const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
  if (!adapter) {
    console.error(`${suite}: no WebGPU adapter, skipped`);
    return null;
  }
  if (adapter.info.isFallbackAdapter && !forcedOn()) {
    console.error(
      `${suite}: skipped: the only WebGPU adapter is a software fallback ` +
        `(${adapter.info.description || "no description"}); set MAMBA_TEST_WEBGPU=1 to run ` +
        `the GPU suites on it anyway`,
    );
    return null;
  }
  return adapter;
}

/** Whether `MAMBA_TEST_WEBGPU` asks for the GPU suites on any adapter. */
function forcedOn(): boolean {
  try {
    return /^(1|true|yes|on)$/i.test(Deno.env.get("MAMBA_TEST_WEBGPU") ?? "");
  } catch {
    return false; // no --allow-env
  }
}
