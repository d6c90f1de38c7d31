// A CPU emulation of the CUDA pieces runtime/custom_ops/gemm_int4_mma.cuh's and attention_mma.cuh's
// kernels use, so that g++ compiles the kernels' own source and runs it
// (tests/test_gemm_int4_emulated.py, tests/test_attention_mma_emulated.py):
//   - a block's threads are std::threads, __syncthreads a std::barrier over them;
//   - mma.sync m16n8k16: the warp's 32 threads leave their fragments in the warp's exchange, wait
//     for each other, and each sums its four results from the PTX fragment layout (in double);
//   - __shfl_xor_sync and ldmatrix (.x4 .trans) the same way, through the warp's exchange, and
//     __syncwarp as a barrier over the warp's threads;
//   - Hopper's warpgroup MMA (A from registers, B from shared memory through its descriptor): the
//     same over a warpgroup's 128 threads, done when issued (its fences, commits and waits then
//     have nothing to do);
//   - cp.async: either done at once, or held back until the wait that must see it (a copy waited
//     for too late or a stage reused too early then shows up as wrong sums);
//   - a thread block cluster's blocks run at once, with a barrier over all their threads, each
//     able to read the others' shared memory until it ends (then that memory is overwritten);
//   - float16 as its bits, each operation correctly rounded (through double).
// Include it before the kernel's header. The emulation is for correctness, not for speed.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(8) uint2 {
  uint32_t x, y;
};
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline float atomicAdd(float* at, float v) { return std::atomic_ref<float>(*at).fetch_add(v); }

// -- float16 -------------------------------------------------------------------------------------
struct __half {
  uint16_t bits;
};
struct __half2 {
  __half x, y;  // x: the low 16 bits
};

namespace cuda_emulation {

inline double half_value(uint16_t h) {
  const int exponent = (h >> 10) & 31, mantissa = h & 1023;
  double v = exponent == 0    ? std::ldexp(mantissa, -24)
             : exponent == 31 ? (mantissa ? NAN : INFINITY)
                              : std::ldexp(1024 + mantissa, exponent - 25);
  return (h & 0x8000) ? -v : v;
}

// The float16 nearest `v` (ties to even).
inline uint16_t half_bits(double v) {
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  v = std::fabs(v);
  if (std::isnan(v)) return 0x7E00;
  if (v == 0) return sign;
  int e;
  std::frexp(v, &e);
  int exponent = e - 1;  // v = 1.f * 2^exponent
  if (exponent < -14) return sign | static_cast<uint16_t>(std::nearbyint(v * 16777216.0));  // subnormal (or 2^-14)
  double q = std::nearbyint(std::ldexp(v, 10 - exponent));                                     // [1024, 2048]
  if (q == 2048) q = 1024, ++exponent;
  if (exponent > 15) return sign | 0x7C00;
  return sign | static_cast<uint16_t>((exponent + 15) << 10) | static_cast<uint16_t>(q - 1024);
}

inline __half2 each(__half2 a, __half2 b, double (*op)(double, double)) {
  return {{half_bits(op(half_value(a.x.bits), half_value(b.x.bits)))},
          {half_bits(op(half_value(a.y.bits), half_value(b.y.bits)))}};
}

}  // namespace cuda_emulation

inline __half __ushort_as_half(uint16_t bits) { return {bits}; }
inline __half __float2half(float v) { return {cuda_emulation::half_bits(v)}; }
inline __half2 __half2half2(__half h) { return {h, h}; }
inline __half2 __hsub2(__half2 a, __half2 b) {
  return cuda_emulation::each(a, b, [](double p, double q) { return p - q; });
}
inline __half2 __hmul2(__half2 a, __half2 b) {
  return cuda_emulation::each(a, b, [](double p, double q) { return p * q; });
}

// -- blocks, warps, asynchronous copies -------------------------------------------------------------
namespace cuda_emulation {

struct Warp {
  std::barrier<> arrived{32};
  uint32_t a[32][4];
  uint32_t b[32][2];
  float lanes[32];        // shfl_xor's exchange
  const void* rows[32];   // load_matrices_transposed's
};

// A warpgroup's exchange for mma_warpgroup: its 128 threads' A registers.
struct Warpgroup {
  std::barrier<> arrived{128};
  uint32_t a[128][4];
};

struct Cluster;

struct Block {
  std::vector<unsigned char> shared;
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<std::unique_ptr<Warpgroup>> warpgroups;
  bool late_copies;
  Cluster* cluster;
  int rank;                       // in the cluster
  std::atomic<int> running{0};  // threads still in the kernel: at 0 the shared memory is gone (0xCD again)
};

struct Cluster {
  std::vector<std::unique_ptr<Block>> blocks;
  std::unique_ptr<std::barrier<>> all;  // every thread of every block
};

struct Copy {
  void* to;
  const void* from;
  bool valid;
  int bytes;  // 16, or 4 (copy_async4)
};

inline thread_local Block* block = nullptr;
inline thread_local std::vector<std::vector<Copy>> committed;  // oldest first
inline thread_local std::vector<Copy> open_group;

inline unsigned char* block_shared() { return block->shared.data(); }
inline int cluster_rank() { return block->rank; }
inline void cluster_sync() { block->cluster->all->arrive_and_wait(); }
// A T at `local`'s offset in the shared memory of the cluster's block `rank`.
template <class T>
T cluster_read(const float* local, int rank) {
  const auto offset = reinterpret_cast<const unsigned char*>(local) - block->shared.data();
  T v;
  std::memcpy(&v, block->cluster->blocks.at(rank)->shared.data() + offset, sizeof v);
  return v;
}
inline float cluster_load(const float* local, int rank) { return cluster_read<float>(local, rank); }
inline float4 cluster_load4(const float* local, int rank) { return cluster_read<float4>(local, rank); }

inline void finish(const Copy& c) {
  if (c.valid) std::memcpy(c.to, c.from, c.bytes);
  else std::memset(c.to, 0, c.bytes);
}

inline void copy_async(void* to, const void* from, bool valid, int bytes = 16) {
  if (block->late_copies) open_group.push_back({to, from, valid, bytes});
  else finish({to, from, valid, bytes});
}
inline void commit_async() {
  committed.push_back(std::move(open_group));
  open_group.clear();
}
inline void wait_async(int pending) {
  while (static_cast<int>(committed.size()) > pending) {
    for (const Copy& c : committed.front()) finish(c);
    committed.erase(committed.begin());
  }
}

// Half `high` (0: the low 16 bits) of a register holding two float16.
inline double half_of(uint32_t r, int high) { return half_value(high ? r >> 16 : r & 0xFFFF); }

// __syncwarp: the warp's 32 threads wait for each other.
inline void warp_sync() { block->warps[threadIdx.x / 32]->arrived.arrive_and_wait(); }

// __shfl_xor_sync over the whole warp: v from lane (this lane ^ mask).
inline float shfl_xor(float v, int mask) {
  Warp& w = *block->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  w.lanes[lane] = v;
  w.arrived.arrive_and_wait();
  const float got = w.lanes[lane ^ mask];
  w.arrived.arrive_and_wait();  // every lane has read the exchange
  return got;
}

// ldmatrix.sync.aligned.m8n8.x4.trans over the warp: lane l's `row` is row l % 8 of matrix l / 8;
// register m of lane (g, t) holds matrix m's (2t, g) and (2t + 1, g), the first in its low half.
inline void load_matrices_transposed(uint32_t (&r)[4], const void* row) {
  Warp& w = *block->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  w.rows[lane] = row;
  w.arrived.arrive_and_wait();
  for (int m = 0; m < 4; ++m) {
    uint16_t low, high;
    std::memcpy(&low, static_cast<const uint16_t*>(w.rows[8 * m + 2 * t]) + g, 2);
    std::memcpy(&high, static_cast<const uint16_t*>(w.rows[8 * m + 2 * t + 1]) + g, 2);
    r[m] = low | static_cast<uint32_t>(high) << 16;
  }
  w.arrived.arrive_and_wait();  // every lane has read the exchange
}

// A's value (row, col) of an m16n8k16 fragment (16 x 16) from its warp's 32 lanes' registers.
inline double a_fragment(const uint32_t (*lanes)[4], int row, int col) {
  return half_of(lanes[(row % 8) * 4 + (col % 8) / 2][row / 8 + 2 * (col / 8)], col % 2);
}

// d += A . B over the warp: lane (g, t) holds A's (g, 2t..), (g + 8, 2t..), (g, 2t + 8..),
// (g + 8, 2t + 8..) and B's (2t.., g), (2t + 8.., g) as half pairs, and D's (g, 2t), (g, 2t + 1),
// (g + 8, 2t), (g + 8, 2t + 1).
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Warp& w = *block->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  std::memcpy(w.a[lane], a, sizeof a);
  w.b[lane][0] = b0, w.b[lane][1] = b1;
  w.arrived.arrive_and_wait();
  auto a_at = [&](int row, int col) { return a_fragment(w.a, row, col); };
  auto b_at = [&](int k, int col) { return half_of(w.b[col * 4 + (k % 8) / 2][k / 8], k % 2); };
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    double sum = d[e];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    out[e] = static_cast<float>(sum);
  }
  w.arrived.arrive_and_wait();  // every lane has read the exchange
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// d (64 x n) += A (64 x 16) . B (16 x n) over the warpgroup: warp w of it holds A's rows
// [16w, 16w + 16) as mma_m16n8k16 does; B lies in shared memory as `desc` describes it (K-major, no
// swizzle: the 8 x 8 core matrix of k [8j, 8j + 8) and columns [8c, 8c + 8) at start + j * k_bytes +
// c * n_bytes, a column's 8 values 16 bytes on from the last's); lane (g, t) of warp w holds d's
// rows 16w + g + 8 (e / 2), columns 8i + 2t + e % 2 in d[4i + e].
inline void mma_warpgroup(float* d, int n, const uint32_t (&a)[4], uint64_t desc) {
  Warpgroup& q = *block->warpgroups[threadIdx.x / 128];
  const int me = threadIdx.x % 128, w = me / 32, g = me % 32 / 4, t = me % 4;
  std::memcpy(q.a[me], a, sizeof a);
  q.arrived.arrive_and_wait();
  const size_t start = (desc & 0x3FFF) << 4, k_bytes = ((desc >> 16) & 0x3FFF) << 4;
  const size_t n_bytes = ((desc >> 32) & 0x3FFF) << 4;
  auto a_at = [&](int row, int col) { return a_fragment(q.a + 32 * (row / 16), row % 16, col); };
  auto b_at = [&](int k, int col) {
    const size_t at = start + (k / 8) * k_bytes + (col / 8) * n_bytes + (col % 8) * 16 + (k % 8) * 2;
    return half_value(static_cast<uint16_t>(block->shared.at(at) | block->shared.at(at + 1) << 8));
  };
  std::vector<float> out(n / 2);
  for (int i = 0; i < n / 8; ++i)
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + 8 * (e / 2), col = 8 * i + 2 * t + e % 2;
      double sum = d[4 * i + e];
      for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
      out[4 * i + e] = static_cast<float>(sum);
    }
  q.arrived.arrive_and_wait();  // every thread has read the exchange
  for (int i = 0; i < n / 2; ++i) d[i] = out[i];
}

// Runs `kernel` (a callable) over `grid` blocks of `threads` threads with `shared_bytes` of shared
// memory each (filled with 0xCD: what is read before it is written shows), one cluster of
// `cluster_z` blocks along z at a time (1: one block at a time).
template <class Kernel>
void launch(dim3 grid, int threads, size_t shared_bytes, bool late_copies, Kernel kernel, unsigned cluster_z = 1) {
  for (unsigned z0 = 0; z0 < grid.z; z0 += cluster_z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Cluster cluster;
        cluster.all = std::make_unique<std::barrier<>>(threads * cluster_z);
        for (unsigned rank = 0; rank < cluster_z; ++rank) {
          auto b = std::make_unique<Block>();
          b->shared.assign(shared_bytes, 0xCD);
          b->all = std::make_unique<std::barrier<>>(threads);
          for (int i = 0; i < threads / 32; ++i) b->warps.push_back(std::make_unique<Warp>());
          for (int i = 0; i < threads / 128; ++i) b->warpgroups.push_back(std::make_unique<Warpgroup>());
          b->late_copies = late_copies;
          b->cluster = &cluster;
          b->rank = static_cast<int>(rank);
          b->running = threads;
          cluster.blocks.push_back(std::move(b));
        }
        std::vector<std::thread> pool;
        for (unsigned rank = 0; rank < cluster_z; ++rank) {
          for (int i = 0; i < threads; ++i) {
            pool.emplace_back([&, rank, i] {
              threadIdx = {static_cast<unsigned>(i), 0, 0};
              blockIdx = {x, y, z0 + rank};
              blockDim = {static_cast<unsigned>(threads), 1, 1};
              gridDim = grid;
              block = cluster.blocks[rank].get();
              committed.clear();
              open_group.clear();
              kernel();
              if (--block->running == 0) std::memset(block->shared.data(), 0xCD, block->shared.size());
            });
          }
        }
        for (auto& th : pool) th.join();
      }
}

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::block->all->arrive_and_wait(); }
