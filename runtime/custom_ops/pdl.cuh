// Programmatic dependent launch, which the CUDA kernels share (linear_common.cuh's GEMVs launch
// with it where their kProgrammatic says so; attention.cu's kernel lets the next one start early).
// Included by the .cu files only (device code, nvcc).
#pragma once
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

namespace optimizer_pdl {

// Programmatic dependent launch (sm_90 on; no-ops before, and in a kernel launched without it):
// let the next kernel in the stream start, and wait until the kernels before this one have
// finished and their writes are visible (before reading anything they wrote).
__device__ __forceinline__ void let_next_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Ask L2 for `bytes` (a multiple of 16) from the 16-byte aligned `p`: one bulk request on sm_90.
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Whether this device takes programmatic dependent launches (compute capability 9.0 on), unless
// OPTIMIZER_CUDA_PDL=0.
inline bool programmatic_launch() {
  static const bool allowed = [] {
    const char* env = getenv("OPTIMIZER_CUDA_PDL");
    return env == nullptr || strcmp(env, "0") != 0;
  }();
  constexpr int kDevices = 64;
  static int major[kDevices] = {};  // 0: not asked yet
  int device = 0;
  if (!allowed || cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kDevices) return false;
  if (major[device] == 0 &&
      cudaDeviceGetAttribute(&major[device], cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return false;
  }
  return major[device] >= 9;
}

}  // namespace optimizer_pdl
