/**
 * The GPU device of the `webgpu` backend: one device per process, shared by every model (so
 * that compiled pipelines are shared too), requested with the adapter's own limits.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import { requestAdapter } from "../quiet_adapter.ts";
import { canvasReadbackWorks, type ReadbackMode } from "./readback.ts";

/** What the backend knows about the device it runs on. */
export interface GpuContext {
  /** The device. */
  readonly device: GPUDevice;
  /** The adapter's description (for benchmarks and error messages). */
  readonly adapterInfo: string;
  /** Whether WGSL `f16` (feature `shader-f16`) is enabled. */
  readonly shaderF16: boolean;
  /** Whether `timestamp-query` is enabled. */
  readonly timestamps: boolean;
  /** Whether subgroup operations are enabled, and the subgroup size (0 when unknown or varying). */
  readonly subgroupSize: number;
  /** Largest storage binding, in bytes. */
  readonly maxBinding: number;
  /** Largest buffer, in bytes. */
  readonly maxBuffer: number;
  /** Workgroup memory available, in bytes. */
  readonly maxWorkgroupStorage: number;
  /** How results are read back (`canvas` skips `mapAsync`'s 10 ms timer; see readback.ts). */
  readonly readback: ReadbackMode;
}

let shared: Promise<GpuContext> | null = null;

/** Whether this runtime offers WebGPU and an adapter. */
export async function hasWebGpu(): Promise<boolean> {
  try {
    return !!(await requestAdapter());
  } catch {
    return false;
  }
}

/**
 * The process-wide device, created on first use.
 *
 * @throws {BackendError} when there is no WebGPU adapter.
 */
export function gpuContext(): Promise<GpuContext> {
  if (!shared) {
    shared = createContext();
    shared.catch(() => (shared = null));
  }
  return shared;
}

async function createContext(): Promise<GpuContext> {
  if (!navigator.gpu) throw new BackendError("WebGPU is not available in this runtime");
  const adapter = await requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new BackendError("no WebGPU adapter found");
  const want = ["shader-f16", "timestamp-query", "subgroups"];
  const have = adapter.features as unknown as { has(f: string): boolean };
  const features = want.filter((f) => have.has(f)) as GPUFeatureName[];
  const L = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: features,
    requiredLimits: {
      maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
      maxBufferSize: L.maxBufferSize,
      maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: Math.min(1024, L.maxComputeInvocationsPerWorkgroup),
      maxComputeWorkgroupSizeX: Math.min(1024, L.maxComputeWorkgroupSizeX),
      maxStorageBuffersPerShaderStage: Math.min(16, L.maxStorageBuffersPerShaderStage),
      maxComputeWorkgroupsPerDimension: L.maxComputeWorkgroupsPerDimension,
    },
  });
  device.lost.then((info) => {
    shared = null;
    if (info.reason !== "destroyed") console.error(`mamba webgpu: device lost: ${info.message}`);
  });
  const info = adapter.info;
  const sgMin = (info as unknown as { subgroupMinSize?: number }).subgroupMinSize ?? 0;
  const sgMax = (info as unknown as { subgroupMaxSize?: number }).subgroupMaxSize ?? 0;
  const hasSg = (device.features as unknown as { has(f: string): boolean }).has("subgroups");
  return {
    device,
    adapterInfo: [info.vendor, info.architecture, info.device, info.description]
      .filter((s) => s).join(" "),
    shaderF16: device.features.has("shader-f16"),
    timestamps: device.features.has("timestamp-query"),
    subgroupSize: hasSg && sgMin === sgMax ? sgMin : 0,
    maxBinding: device.limits.maxStorageBufferBindingSize,
    maxBuffer: device.limits.maxBufferSize,
    maxWorkgroupStorage: device.limits.maxComputeWorkgroupStorageSize,
    readback: (await canvasReadbackWorks(device)) ? "canvas" : "map",
  };
}
