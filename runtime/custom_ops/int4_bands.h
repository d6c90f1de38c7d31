// How LinearInt4's prefill path (linear_int4.cu's dequantized_gemm: more rows than the tensor-core
// GEMM takes) cuts a weight into bands: each band of codes rows dequantized to float16 into the
// scratch, then multiplied by cuBLAS into its columns of the output. Plain C++ (no CUDA): tested on a
// CPU by tests/test_int4_bands.py.
#pragma once
#include <stdint.h>

namespace int4_bands {

// float16 values a band holds at most (32 MB: a band stays in L2 for the GEMM that reads it).
constexpr int64_t kBandValues = 16L << 20;

// A band's codes rows are a multiple of this where the weight takes more than one band: its GEMM's
// output columns then start 16-byte aligned and come in whole tiles. A band of kBandValues / K rows
// took the Llama-3.1-8B down projection (K 14336) in bands of 1170 rows, its GEMMs writing from
// columns 1170, 2340, ...: 64 concurrent 128-token prompts' first tokens came after 385-397 ms against
// the fp16 engine's 304-311 (run66, H100); in bands of 1152 rows 306-317 against 289-310 (run67).
constexpr int64_t kBandAlign = 128;

// The codes rows a band holds, for a weight of `rows` codes rows and `k` inputs: all of them where
// they fit `values`, else the most that do, a multiple of kBandAlign (and at least kBandAlign).
inline int64_t band_rows(int64_t rows, int64_t k, int64_t values = kBandValues) {
  if (rows * k <= values) return rows < 1 ? 1 : rows;
  const int64_t fit = values / k / kBandAlign * kBandAlign;
  const int64_t band = fit < kBandAlign ? kBandAlign : fit;
  return band < rows ? band : rows;
}

}  // namespace int4_bands
