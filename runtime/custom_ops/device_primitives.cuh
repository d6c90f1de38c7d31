// The few CUDA device operations gemm_int4_mma.cuh's kernel uses beyond plain C++ (shared memory,
// cp.async, mma.sync, Hopper's warpgroup MMA, non-coherent loads, thread block clusters, programmatic
// dependent launch),
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
// copy_async of 4 bytes (cp.async .ca, through L1: .cg takes 16 bytes only), both addresses 4-byte
// aligned.
__device__ __forceinline__ void copy_async4(void* shared, const void* global, bool valid) {
#if defined(__CUDACC__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 4 : 0));
#else
  cuda_emulation::copy_async(shared, global, valid, 4);
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

// Four 8 x 8 float16 matrices from shared memory, transposed (ldmatrix .x4 .trans): lane l gives the
// address of row l % 8 (16 bytes) of matrix l / 8; register m of lane (g, t) = (l / 4, l % 4) gets
// matrix m's elements (row 2t, column g) and (row 2t + 1, column g), the first in its low half: for a
// matrix of k rows and n columns, an mma.sync B fragment's register.
__device__ __forceinline__ void load_matrices_transposed(uint32_t (&r)[4], const void* row) {
#if defined(__CUDACC__)
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
#else
  cuda_emulation::load_matrices_transposed(r, row);
#endif
}

// Hopper's warpgroup MMA (wgmma, sm_90a; a trap in device code built for another target, which
// the host never launches: gemm_int4_mma::device_has_wgmma). The warpgroup's 4 warps (threads
// [128q, 128q + 128)) together multiply A (64 x 16; warp w's rows [16w, 16w + 16) in its registers
// as for mma.sync m16n8k16) by B (16 x N, N = 8 ROWS8; in shared memory, described by
// `shared_matrix`), into d (64 x N, fp32; warp w's rows, lane (g, t)'s d[4i + e] at row 16w + g +
// 8 (e / 2), column 8i + 2t + e % 2). Asynchronous: issued after `mma_fence` (registers written
// before it are read), grouped by `mma_commit`; `mma_wait<N>` returns once at most N groups are in
// flight, and only then may d be read or its A registers and B's shared memory change.
//
// The descriptor of B stored K-major without swizzling: 8 x 8 core matrices (8 of B's columns'
// 16 bytes of k each, one after another: 128 bytes), the one at k [8, 16) `k_bytes` after the one at
// [0, 8), columns [8c, 8c + 8) c * `n_bytes` on.
__device__ __forceinline__ uint64_t shared_matrix(const void* start, uint32_t k_bytes, uint32_t n_bytes) {
#if defined(__CUDACC__)
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(start));
#else
  const uint32_t address = static_cast<uint32_t>(static_cast<const unsigned char*>(start) - block_shared());
#endif
  // start, leading (K) and stride (N) byte offsets in 16-byte units; base offset and swizzle 0
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | static_cast<uint64_t>((k_bytes >> 4) & 0x3FFF) << 16 |
         static_cast<uint64_t>((n_bytes >> 4) & 0x3FFF) << 32;
}

template <int ROWS8>
__device__ __forceinline__ void mma_warpgroup(float* d, const uint32_t (&a)[4], uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(ROWS8 == 1 || ROWS8 == 2 || ROWS8 == 4 || ROWS8 == 8, "N: 8, 16, 32 or 64");
  if constexpr (ROWS8 == 1) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  } else if constexpr (ROWS8 == 2) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  } else if constexpr (ROWS8 == 4) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, "
        "1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  } else {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
#elif defined(__CUDACC__)
#if defined(__CUDA_ARCH__)
  __trap();  // device code for another target: never launched
#endif
#else
  cuda_emulation::mma_warpgroup(d, 8 * ROWS8, a, b);
#endif
}

__device__ __forceinline__ void mma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void mma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving reads or writes of `v` across this point (the warpgroup MMA
// writes its d behind the compiler's back, until mma_wait).
__device__ __forceinline__ void pin_register(float& v) {
#if defined(__CUDACC__)
  asm volatile("" : "+f"(v)::"memory");
#endif
}

// Makes this thread's shared-memory writes (plain stores) visible to the warpgroup MMA's reads of
// shared memory (the async proxy) after the next barrier.
__device__ __forceinline__ void fence_async_shared() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// A 16-byte global read through the non-coherent cache (16-byte aligned), issued where it is written.
__device__ __forceinline__ uint4 load_u128(const void* p) {
#if defined(__CUDACC__)
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
#else
  return *static_cast<const uint4*>(p);
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
// (what each wrote to shared memory before it is seen by all after), and the float, or the four
// floats (16-byte aligned), at `local`'s offset in the shared memory of the cluster's block `rank`.
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
// cluster_sync without its memory ordering (no release fence: on sm_90 ptxas puts a GPU-wide
// MEMBAR before an ordered arrive, which waits for the thread's stores): for a block whose
// shared memory the others have been reading, so that it exits only once they are done (each read
// a value that was used before its thread arrived).
__device__ __forceinline__ void cluster_sync_after_reads() {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
#endif
#else
  cuda_emulation::cluster_sync();
#endif
}
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 900
// `local`'s offset in the shared memory of the cluster's block `rank`, as ld.shared::cluster reads it.
__device__ __forceinline__ uint32_t cluster_address(const void* local, int rank) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(address), "r"(rank));
  return remote;
}
#endif
__device__ __forceinline__ float cluster_load(const float* local, int rank) {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(cluster_address(local, rank)) : "memory");
  return v;
#else
  return *local;
#endif
#else
  return cuda_emulation::cluster_load(local, rank);
#endif
}
__device__ __forceinline__ float4 cluster_load4(const float* local, int rank) {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(cluster_address(local, rank))
               : "memory");
  return v;
#else
  return *reinterpret_cast<const float4*>(local);
#endif
#else
  return cuda_emulation::cluster_load4(local, rank);
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

// The warp's lanes wait for each other, their shared and global memory writes ordered (__syncwarp).
__device__ __forceinline__ void warp_sync() {
#if defined(__CUDACC__)
  __syncwarp();
#else
  cuda_emulation::warp_sync();
#endif
}

// v from the lane whose index is this lane's XOR `mask` (the whole warp takes part).
__device__ __forceinline__ float warp_xor(float v, int mask) {
#if defined(__CUDACC__)
  return __shfl_xor_sync(0xffffffffu, v, mask);
#else
  return cuda_emulation::shfl_xor(v, mask);
#endif
}

// float16 bits to float and back (round to nearest even), and e^v (__expf's approximation on CUDA).
__device__ __forceinline__ float half_float(uint16_t h) {
#if defined(__CUDACC__)
  return __half2float(__ushort_as_half(h));
#else
  return static_cast<float>(cuda_emulation::half_value(h));
#endif
}
__device__ __forceinline__ uint16_t float_half(float v) {
#if defined(__CUDACC__)
  return __half_as_ushort(__float2half(v));
#else
  return cuda_emulation::half_bits(v);
#endif
}
__device__ __forceinline__ float fast_exp(float v) {
#if defined(__CUDACC__)
  return __expf(v);
#else
  return std::exp(v);
#endif
}

}  // namespace device_primitives
