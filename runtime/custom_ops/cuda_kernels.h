// The CUDA entry points of the library (swiglu.cu, linear.cu, linear_int4.cu, attention.cu;
// cuda_none.cc in a build without nvcc, whose library then has CPU kernels only). Each launches on
// `stream`, onnxruntime's compute stream (a cudaStream_t), and returns null, or why it could not.
#pragma once
#include <stdint.h>

// Whether this build has the CUDA kernels.
bool has_cuda_kernels();

// SwiGLU: x (rows, 2I) gate then up -> y (rows, I).
const char* swiglu_cuda(const void* x, void* y, int64_t rows, int64_t inter, void* stream);

// One call of the Linear family, float16 data on the device:
//   h = norm ? rms_norm(x + skip) * gamma : x         (sum = x + skip, written with norm)
//   y = swiglu ? silu(h . w_gate^T) * (h . w_up^T) : h . w^T
// x, skip, sum (rows, k); gamma (k); w (n, k), or (2n, k) with swiglu: gate rows, then up rows;
// y (rows, n). `scratch` holds linear_scratch_elements(call) float16 values.
struct LinearCall {
  const void* x;
  const void* skip;
  const void* gamma;
  const void* w;
  void* y;
  void* sum;
  void* scratch;
  int64_t rows;
  int64_t n;
  int64_t k;
  float epsilon;
  bool norm;
  bool swiglu;
};

// The scratch a call needs (0 where the GEMV kernel does it all: up to 4 rows).
int64_t linear_scratch_elements(const LinearCall& call);

// `cublas`: onnxruntime's cuBLAS handle for this stream (more rows than the GEMV takes).
const char* linear_cuda(const LinearCall& call, void* stream, void* cublas);

// The 4-bit weights of the LinearInt4 family, in onnxruntime MatMulNBits' layout: `codes` (N', K /
// block, block / 2) uint8, two codes a byte, the low nibble first; `scales` (N', K / block)
// float16; `zeros` (N', ceil(K / block / 2)) uint8 packed the same way, or null (all 8); N' = n,
// or 2n with swiglu. w[o, i] = (code[o, i] - zero[o, i / block]) * scale[o, i / block].
struct Int4Weights {
  const void* codes;
  const void* scales;
  const void* zeros;
  int64_t block;
};

// The scratch a call with 4-bit weights needs (0 where the GEMV kernel does it all: up to 4 rows).
int64_t linear_int4_scratch_elements(const LinearCall& call, const Int4Weights& weights);

// LinearCall's computation with `weights` for its w (call.w unused).
const char* linear_int4_cuda(const LinearCall& call, const Int4Weights& weights, void* stream, void* cublas);

// Two 4-bit linears with a norm between (LinearInt4NormLinearInt4[SwiGLU]): h = first.x . wa^T
// (first: x, rows, n, k; its y and scratch unused), then `call` (norm, with swiglu or not; its x
// unused) of h. The same y and sum as linear_int4_cuda of `first` and then of `call` with x = h;
// above the GEMV's rows, where the first GEMM stores K's parts, the norm's kernel adds them up.
int64_t linear_int4_chain_scratch_elements(const LinearCall& first, const Int4Weights& first_weights,
                                           const LinearCall& call, const Int4Weights& weights);
const char* linear_int4_chain_cuda(const LinearCall& first, const Int4Weights& first_weights, const LinearCall& call,
                                   const Int4Weights& weights, void* stream, void* cublas);

// One call of CachedAttention (attention_math.h has its positions), float16 data on the device:
// query rows (batch, seq) of `query_stride` values, head h's at h * head_dim; key and value rows
// of `kv_stride` values, kv head g's at g * head_dim (packed q/k/v: pointers into the query's
// rows); the caches (batch, kv_heads, past_capacity, head_dim) read from past and (batch,
// kv_heads, capacity, head_dim) written to present: the same buffer where onnxruntime binds them
// so (the static layout), else the past copied into the present's first positions first;
// seqlens (batch) int32 on the device; cos, sin (max_positions, head_dim / 2); out (batch, seq,
// heads * head_dim).
struct AttentionCall {
  const void* query;
  const void* key;
  const void* value;
  const void* past_key;
  const void* past_value;
  void* present_key;
  void* present_value;
  const int32_t* seqlens;
  const void* cos;
  const void* sin;
  void* out;
  int64_t batch;
  int64_t seq;
  int64_t heads;
  int64_t kv_heads;
  int64_t head_dim;
  int64_t capacity;
  int64_t past_capacity;
  int64_t max_positions;
  int64_t query_stride;
  int64_t kv_stride;
  int64_t window;  // <= 0: none
  float scale;
  float softcap;   // <= 0: none
};

// Rotary embedding, the new keys and values written into the cache, and attention, one kernel.
const char* attention_cuda(const AttentionCall& call, void* stream);
