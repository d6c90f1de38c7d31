// What the GEMV probes share: one warp an output column n, each lane holding partial sums for
// ROWS rows; the warp adds them up and lane 0 writes y[m, n].
#pragma once
#include <cuda_fp16.h>

template <int ROWS>
__device__ __forceinline__ void store_warp_sums(const float (&acc)[ROWS], int lane, __half* y, int n_out, int n) {
#pragma unroll
  for (int m = 0; m < ROWS; ++m) {
    float v = acc[m];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) y[static_cast<size_t>(m) * n_out + n] = __float2half(v);
  }
}
