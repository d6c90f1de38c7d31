// The few CUDA device operations gemm_int4_mma.cuh's kernel uses beyond plain C++ (shared memory,
// cp.async, mma.sync, non-coherent loads, thread block clusters, programmatic dependent launch),
// each as nvcc's inline PTX or, compiled without nvcc, as tests/cuda_emulation.h's CPU emulation of
// it (included first).
#pragma once
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pdl.cuh"
#endif
#include <stdint.h>

namespace device_primitives {

// The block's dynamic shared memory.
__device__ __forceinline__ unsigned char* block_shared() {
#if defined(__CUDACC__)
  extern __shared__ __align__(128) unsigned char shared[];
  return shared;
#else
  return cuda_emulation::block_shared();
#endif
}

// 16 bytes from global to shared memory in the background (zeros where not `valid`); the copies
// issued since the last commit form a group; wait until at most PENDING groups are in flight.
__device__ __forceinline__ void copy_async(void* shared, const void* global, bool valid) {
#if defined(__CUDACC__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0));
#else
  cuda_emulation::copy_async(shared, global, valid);
#endif
}
__device__ __forceinline__ void commit_async() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;\n" ::);
#else
  cuda_emulation::commit_async();
#endif
}
template <int PENDING>
__device__ __forceinline__ void wait_async() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
#else
  cuda_emulation::wait_async(PENDING);
#endif
}

// d += A (16 x 16) . B (16 x 8), the warp's registers in PTX's m16n8k16 fragment layout.
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  cuda_emulation::mma_m16n8k16(d, a, b0, b1);
#endif
}

// A 2- or 1-byte global read through the non-coherent cache, issued where it is written (volatile).
__device__ __forceinline__ uint16_t load_u16(const void* p) {
#if defined(__CUDACC__)
  uint16_t v;
  asm volatile("ld.global.nc.u16 %0, [%1];\n" : "=h"(v) : "l"(p));
  return v;
#else
  return *static_cast<const uint16_t*>(p);
#endif
}
__device__ __forceinline__ uint16_t load_u8(const void* p) {
#if defined(__CUDACC__)
  uint16_t v;
  asm volatile("ld.global.nc.u8 %0, [%1];\n" : "=h"(v) : "l"(p));
  return v;
#else
  return *static_cast<const uint8_t*>(p);
#endif
}

// The block's rank in its thread block cluster (sm_90), a barrier over the cluster's threads
// (what each wrote to shared memory before it is seen by all after), and the float at `local`'s
// offset in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ int cluster_rank() {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  uint32_t rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
  return static_cast<int>(rank);
#else
  return 0;
#endif
#else
  return cuda_emulation::cluster_rank();
#endif
}
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
#endif
#else
  cuda_emulation::cluster_sync();
#endif
}
__device__ __forceinline__ float cluster_load(const float* local, int rank) {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t remote;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(address), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(remote) : "memory");
  return v;
#else
  return *local;
#endif
#else
  return cuda_emulation::cluster_load(local, rank);
#endif
}

// Programmatic dependent launch (pdl.cuh): wait until the kernels before this one are done and
// their writes visible; let the next kernel start. No-ops in a kernel launched without it, and on
// the CPU (the emulation runs one kernel at a time).
__device__ __forceinline__ void wait_for_earlier_kernels() {
#if defined(__CUDACC__)
  optimizer_pdl::wait_for_inputs();
#endif
}
__device__ __forceinline__ void start_next_kernel() {
#if defined(__CUDACC__)
  optimizer_pdl::let_next_start();
#endif
}

}  // namespace device_primitives
