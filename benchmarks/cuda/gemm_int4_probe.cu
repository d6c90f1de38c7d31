// The int4 GEMM probe's entry points (benchmarks/gpu_int4_gemm_probe.py): the product's
// tensor-core GEMM with 4-bit weights (runtime/custom_ops/gemm_int4_mma.cuh, LinearInt4 above 4
// rows) on its own, and the path it replaced (`dequantize_band`: the weights dequantized to
// float16 band by band for cuBLAS, as linear_int4.cu still does for shapes the GEMM does not take).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../../runtime/custom_ops/gemm_int4_mma.cuh"

namespace {

// Rows [first, first + count) of symmetric 4-bit weights (zero point 8, blocks of `block`)
// dequantized into out (count, K) as linear_int4.cu's dequantize_rows does: a thread a 32-bit word
// (eight codes), written as one 16-byte store.
__global__ void dequantize_band(const uint8_t* codes, const __half* scales, int k, int block, int64_t first,
                                int64_t count, __half* out) {
  const int words = k / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count * words) return;
  const int64_t row = first + i / words;
  const int w = static_cast<int>(i % words);
  const uint32_t word = reinterpret_cast<const uint32_t*>(codes + row * (k / 2))[w];
  const __half2 scale = __half2half2(scales[row * (k / block) + w * 8 / block]);
  uint4 packed;
  __half2* h = reinterpret_cast<__half2*>(&packed);
  __half2 pair[4];  // codes (j, j + 4)
  for (int j = 0; j < 4; ++j) {
    const uint32_t bits = ((word >> (4 * j)) & 0x000F000Fu) | 0x64006400u;
    pair[j] = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&bits), __float2half2_rn(1032.f)), scale);
  }
  h[0] = __halves2half2(__low2half(pair[0]), __low2half(pair[1]));
  h[1] = __halves2half2(__low2half(pair[2]), __low2half(pair[3]));
  h[2] = __halves2half2(__high2half(pair[0]), __high2half(pair[1]));
  h[3] = __halves2half2(__high2half(pair[2]), __high2half(pair[3]));
  *reinterpret_cast<uint4*>(out + (i / words) * k + 8 * w) = packed;
}

}  // namespace

// y (m, n) = x (m, k) . w^T through gemm_int4_mma.cuh in tile configuration `config` (0: 128 outputs a
// block, 1: 256, by mma.sync; 2: 128 by the warpgroup MMA; 4: config 0's two steps of K a stage; + 10:
// an 8-deep pipeline, not 4; + 20: a 3-deep one; + 100 h:
// blocks of at most 64 >> h rows, h 1-3; + 1000: K's parts added by atomics, not in a thread block
// cluster; + 2000: each part's sums stored, added by the conversion after; + 10000: its kernels as
// programmatic dependent launches, reading their weights before the kernel before them is done; +
// 100000: each thread storing its own sums one by one, not through shared memory): 0 on
// success, -1 for what it does not take, else the CUDA error code. `work`: parts * m * n floats.
extern "C" int gemm_int4_registers(const void* x, const void* codes, const void* scales, void* y, void* work, int m,
                                   int n, int k, int block, int config, int splits, void* stream) {
  gemm_int4_mma::Args a{};
  a.x = static_cast<const __half*>(x);
  a.codes = static_cast<const uint8_t*>(codes);
  a.scales = static_cast<const __half*>(scales);
  a.y = static_cast<__half*>(y);
  a.sums = static_cast<float*>(work);
  a.m = m;
  a.n = n;
  a.k = k;
  a.block = block;
  using gemm_int4_mma::SplitSums;
  a.direct_stores = config >= 100000 ? 1 : 0;
  config %= 100000;
  const bool programmatic = config >= 10000;
  config %= 10000;
  const SplitSums sums = config >= 2000 ? SplitSums::kInParts : config >= 1000 ? SplitSums::kByAtomics
                                                                                : SplitSums::kInCluster;
  const gemm_int4_mma::Launch how{static_cast<cudaStream_t>(stream), sums, programmatic};
  const int rows = 64 >> (config % 1000 / 100);
  config %= 100;
  const char* failure = config >= 20   ? gemm_int4_mma::launch<3>(a, config - 20, splits, how, rows)
                        : config >= 10 ? gemm_int4_mma::launch<8>(a, config - 10, splits, how, rows)
                                       : gemm_int4_mma::launch<4>(a, config, splits, how, rows);
  if (failure != nullptr) {
    const int error = static_cast<int>(cudaGetLastError());
    return error != 0 ? error : -1;
  }
  return 0;
}

// The splits gemm_int4_plan.h picks for `fill` blocks (blocks of at most `rows` rows; at most
// `most_parts`: LinearInt4 asks for a cluster's, gemm_int4::kClusterParts).
extern "C" int gemm_int4_splits(int m, int n, int k, int config, int fill, int rows, int most_parts) {
  return gemm_int4::splits_for(m, n, k, config, fill, rows, most_parts);
}

// Codes rows [first, first + count) dequantized to float16 into out (count, k).
extern "C" int gemm_int4_dequantize(const void* codes, const void* scales, void* out, int k, int block, long first,
                                    long count, void* stream) {
  const int64_t threads = count * (k / 8);
  dequantize_band<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(codes), static_cast<const __half*>(scales), k, block, first, count,
      static_cast<__half*>(out));
  return static_cast<int>(cudaGetLastError());
}
