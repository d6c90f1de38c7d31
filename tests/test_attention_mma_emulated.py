"""runtime/custom_ops/attention_mma.cuh's tensor-core kernels (the prefill's two, the decode one), their own
source, run on the CPU: g++ compiles it against tests/cuda_emulation.h (a block's threads as std::threads,
mma.sync, ldmatrix and __shfl_xor_sync from PTX's fragment layouts, float16 correctly rounded) and a harness
launches the grids as attention_mma::launch and launch_decode do, the present bound to the past's buffer (the
static layout's in-place call). Each real token's output is compared with attention computed in double from
the same float16 inputs (the queries and new keys rotated and rounded as the cache holds them, causal, sliding
window, softcap; P's rounding to float16 for its MMA is the kernels' only other rounding), and the cache with
the new tokens' keys and values written, bit for bit, and nothing else changed. AddressSanitizer watches every
read and write. The CUDA tests (tests/test_custom_ops_attention.py) run the kernels inside onnxruntime on a
GPU, against the op's CPU kernel."""

from __future__ import annotations

import subprocess

import pytest

from tests.cxx_harness import build

HARNESS = r"""
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include "cuda_emulation.h"
#include "attention_mma.cuh"
using cuda_emulation::half_bits;
using cuda_emulation::half_value;

// a float16 value rounded through float, as the kernel's float_half rounds a float
static double round_half(double v) { return half_value(half_bits(static_cast<float>(v))); }

template <int HD>
int run(AttentionCall& c, bool decode, bool late, const std::vector<int>& lengths,
        const std::vector<uint16_t>& keys_before, const std::vector<uint16_t>& values_before) {
  const dim3 grid{static_cast<unsigned>(c.heads),
                  static_cast<unsigned>((c.seq + attention_mma::kQueries - 1) / attention_mma::kQueries),
                  static_cast<unsigned>(c.batch)};
  if (decode) {  // attention_mma::launch_decode's kernel
    cuda_emulation::launch(dim3{static_cast<unsigned>(c.kv_heads), static_cast<unsigned>(c.batch), 1},
                           attention_mma::kThreads, attention_mma::DecodeShared<HD>::kBytes, late,
                           [&] { attention_mma::decode_attention<HD>(c); });
  } else {  // attention_mma::launch's two kernels, one after the other
    cuda_emulation::launch(dim3{static_cast<unsigned>(c.seq), static_cast<unsigned>(c.batch), 1},
                           attention_mma::kThreads, 0, false, [&] { attention_mma::append_new_tokens<HD>(c); });
    cuda_emulation::launch(grid, attention_mma::kThreads, attention_mma::Shared<HD>::kBytes, late,
                           [&] { attention_mma::prefill_attention<HD>(c); });
  }
  const auto* q = static_cast<const uint16_t*>(c.query);
  const auto* nk = static_cast<const uint16_t*>(c.key);
  const auto* nv = static_cast<const uint16_t*>(c.value);
  const auto* cs = static_cast<const uint16_t*>(c.cos);
  const auto* sn = static_cast<const uint16_t*>(c.sin);
  const auto* keys = static_cast<const uint16_t*>(c.present_key);
  const auto* values = static_cast<const uint16_t*>(c.present_value);
  const auto* out = static_cast<const uint16_t*>(c.out);
  const int half = HD / 2;
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(HD));
  // a head rotated at `position` and rounded to float16 (the kernel's arithmetic: float, then rounding)
  auto rotated = [&](const uint16_t* x, int64_t position, std::vector<double>& r) {
    const int64_t t = std::min<int64_t>(position, c.max_positions - 1) * half;
    for (int d = 0; d < half; ++d) {
      const float a = half_value(x[d]), b = half_value(x[d + half]);
      const float cv = half_value(cs[t + d]), sv = half_value(sn[t + d]);
      r[d] = half_value(half_bits(rotated_first(a, b, cv, sv)));
      r[d + half] = half_value(half_bits(rotated_second(a, b, cv, sv)));
    }
  };
  double worst = 0, worst_cache = 0;
  long checked = 0;
  std::vector<double> qr(HD), kr(HD);
  std::vector<int> written(c.batch * c.kv_heads * c.capacity, 0);
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t past = past_positions(c.seqlens[b], c.seq);
    for (int64_t s = 0; s < c.seq; ++s) {  // the cache: every new token's key and value
      const int64_t position = past + s;
      if (position >= c.capacity) continue;
      for (int64_t g = 0; g < c.kv_heads; ++g) {
        written[(b * c.kv_heads + g) * c.capacity + position] = 1;
        const int64_t at = ((b * c.kv_heads + g) * c.capacity + position) * HD;
        rotated(nk + (b * c.seq + s) * c.kv_stride + g * HD, position, kr);
        for (int d = 0; d < HD; ++d) {
          worst_cache = std::max(worst_cache, std::fabs(half_value(keys[at + d]) - kr[d]));
          worst_cache = std::max(worst_cache, std::fabs(half_value(values[at + d]) -
                                                        half_value(nv[(b * c.seq + s) * c.kv_stride + g * HD + d])));
        }
      }
    }
    for (int64_t s = 0; s < lengths[b] - past; ++s) {  // the real tokens' outputs
      const int64_t position = past + s;
      for (int64_t h = 0; h < c.heads; ++h) {
        const int64_t g = h / (c.heads / c.kv_heads);
        rotated(q + (b * c.seq + s) * c.query_stride + h * HD, position, qr);
        const int64_t first = first_key(position, c.window);
        const int64_t last = std::min<int64_t>(position, c.capacity - 1);
        std::vector<double> scores;
        for (int64_t j = first; j <= last; ++j) {
          const int64_t at = ((b * c.kv_heads + g) * c.capacity + j) * HD;
          double dot = 0;
          for (int d = 0; d < HD; ++d) dot += qr[d] * half_value(keys[at + d]);  // the cache checked above
          scores.push_back(capped(static_cast<float>(dot * scale), c.softcap));
        }
        double top = -INFINITY, total = 0;
        for (double v : scores) top = std::max(top, v);
        for (double& v : scores) total += (v = std::exp(v - top));
        for (int d = 0; d < HD; ++d) {
          double want = 0;
          for (int64_t j = first; j <= last; ++j) {
            want += scores[j - first] * half_value(values[((b * c.kv_heads + g) * c.capacity + j) * HD + d]);
          }
          want /= total;
          const double got = half_value(out[(b * c.seq + s) * c.heads * HD + h * HD + d]);
          worst = std::max(worst, std::fabs(got - want) / (1.0 + std::fabs(want)));
          ++checked;
        }
      }
    }
  }
  for (size_t i = 0; i < written.size(); ++i) {  // the rest of the cache as it was
    if (written[i]) continue;
    for (int d = 0; d < HD; ++d) {
      if (keys[i * HD + d] != keys_before[i * HD + d] || values[i * HD + d] != values_before[i * HD + d]) {
        worst_cache = INFINITY;
      }
    }
  }
  std::printf("%.6g %.6g %ld\n", worst, worst_cache, checked);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 13) return 2;
  const bool decode = std::atoi(argv[argc - 2]);  // decode_attention, else the prefill's two kernels
  const bool late = std::atoi(argv[argc - 1]);    // cp.async's copies held back until waited for
  argc -= 2;
  const int batch = std::atoi(argv[1]), seq = std::atoi(argv[2]), heads = std::atoi(argv[3]);
  const int kv_heads = std::atoi(argv[4]), hd = std::atoi(argv[5]), capacity = std::atoi(argv[6]);
  const int window = std::atoi(argv[7]);
  const float softcap = std::atof(argv[8]), scale = std::atof(argv[9]);
  std::vector<int> lengths;
  for (int i = 10; i < argc; ++i) lengths.push_back(std::atoi(argv[i]));
  if (static_cast<int>(lengths.size()) != batch) return 2;
  std::mt19937 rng(batch * 1000 + seq * 10 + hd);
  std::normal_distribution<double> normal(0, 1);
  const int width = (heads + 2 * kv_heads) * hd, positions = capacity + 1;
  std::vector<uint16_t> packed(static_cast<size_t>(batch) * seq * width);
  std::vector<uint16_t> key_cache(static_cast<size_t>(batch) * kv_heads * capacity * hd);
  std::vector<uint16_t> value_cache(key_cache.size()), out(static_cast<size_t>(batch) * seq * heads * hd, 0x7E00);
  std::vector<uint16_t> cos(static_cast<size_t>(positions) * hd / 2), sin(cos.size());
  for (auto& v : packed) v = half_bits(normal(rng));
  for (auto& v : key_cache) v = half_bits(normal(rng));
  for (auto& v : value_cache) v = half_bits(normal(rng));
  for (int p = 0; p < positions; ++p)
    for (int d = 0; d < hd / 2; ++d) {
      const double angle = p * std::pow(10000.0, -static_cast<double>(d) / (hd / 2));
      cos[p * hd / 2 + d] = half_bits(std::cos(angle));
      sin[p * hd / 2 + d] = half_bits(std::sin(angle));
    }
  std::vector<int32_t> seqlens;
  for (int l : lengths) seqlens.push_back(l - 1);
  const std::vector<uint16_t> keys_before = key_cache, values_before = value_cache;
  AttentionCall c{};
  c.query = packed.data();
  c.key = packed.data() + heads * hd;
  c.value = packed.data() + (heads + kv_heads) * hd;
  c.past_key = c.present_key = key_cache.data();  // in place: the static layout's one buffer
  c.past_value = c.present_value = value_cache.data();
  c.seqlens = seqlens.data();
  c.cos = cos.data();
  c.sin = sin.data();
  c.out = out.data();
  c.batch = batch, c.seq = seq, c.heads = heads, c.kv_heads = kv_heads, c.head_dim = hd;
  c.capacity = c.past_capacity = capacity, c.max_positions = positions;
  c.query_stride = c.kv_stride = width;
  c.window = window, c.scale = scale, c.softcap = softcap;
  switch (hd) {
    case 32: return run<32>(c, decode, late, lengths, keys_before, values_before);
    case 64: return run<64>(c, decode, late, lengths, keys_before, values_before);
    case 80: return run<80>(c, decode, late, lengths, keys_before, values_before);
    case 128: return run<128>(c, decode, late, lengths, keys_before, values_before);
  }
  return 3;
}
"""

# (batch, new tokens, heads, kv heads, head size, capacity, window, softcap, scale, each row's positions after)
PREFILLS = {
    "a first prefill over two query tiles and two key steps": (1, 100, 4, 2, 64, 128, -1, 0.0, 0.0, [100]),
    "a right-padded first prefill": (2, 70, 2, 1, 32, 80, -1, 0.0, 0.0, [70, 33]),
    "a chunk after a past, keys from the cache and the inputs": (1, 40, 4, 1, 128, 112, -1, 0.0, 0.0, [100]),
    "a sliding window": (1, 90, 2, 2, 64, 96, 20, 0.0, 0.0, [90]),
    "a softcap, head size 80, a scale given": (2, 20, 3, 1, 80, 40, -1, 2.0, 0.2, [20, 31]),
}
# decode_attention's: the group's query heads x new tokens fit its 16 rows
DECODES = {
    "decode rows of different lengths": (3, 1, 4, 2, 32, 80, -1, 0.0, 0.0, [70, 1, 17]),
    "a decode, four heads a kv head, keys over every warp": (2, 1, 8, 2, 64, 160, -1, 0.0, 0.0, [150, 33]),
    "groups of 3, head size 80, a softcap": (2, 1, 6, 2, 80, 64, -1, 2.0, 0.0, [40, 64]),
    "a verification call of 4 tokens, 16 rows": (2, 4, 8, 2, 64, 96, -1, 0.0, 0.0, [90, 12]),
    "a sliding window, head size 128, a scale given": (1, 2, 4, 1, 128, 100, 30, 0.0, 0.3, [100]),
}
CASES = {**{f"prefill: {k}": (False, v) for k, v in PREFILLS.items()},
         **{f"decode: {k}": (True, v) for k, v in DECODES.items()}}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return build(tmp_path_factory.mktemp("attention_mma"), HARNESS, "-std=c++20", "-pthread", "-O1", "-g",
                 "-fsanitize=address")


@pytest.mark.parametrize("late", [False, True], ids=["copies at once", "copies as late as allowed"])
@pytest.mark.parametrize("name", CASES)
def test_the_tensor_core_kernels_compute_the_attention_and_write_the_cache(harness, name, late):
    """With cp.async's copies done when issued, and held back until the wait that must see them (a
    stage read before its copies were waited for, or refilled while read, then shows)."""
    decode, (batch, seq, heads, kv_heads, hd, capacity, window, softcap, scale, lengths) = CASES[name]
    args = [batch, seq, heads, kv_heads, hd, capacity, window, softcap, scale, *lengths, int(decode), int(late)]
    done = subprocess.run([str(harness), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    worst, worst_cache, checked = done.stdout.split()
    assert int(checked) == sum(lengths[b] - max(0, lengths[b] - seq) for b in range(batch)) * heads * hd
    assert float(worst_cache) == 0.0, "the cache's new keys and values, and nothing else written"
    assert float(worst) < 2e-3, f"largest output error {worst} (relative to 1 + |value|)"
