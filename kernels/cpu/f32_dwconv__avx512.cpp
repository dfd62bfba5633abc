// Depthwise microkernels, AVX-512: tiles of 4 vectors of 16 pixels. The kernel is bound by
// its unaligned loads (9 per vector for 3x3, most of them split over two cache lines), not
// by FMAs or weight broadcasts: tiles of 4 measured 5% faster than 6, 8, 12 or 16.
#include <immintrin.h>

#include <cstring>

#include "f32_dwconv_body.h"

namespace convkit {
namespace {

struct Avx512 {
  using Vec = __m512;
  static constexpr int lanes = 16, tile = 4, gw_taps = 16;

  static Vec broadcast(float x) { return _mm512_set1_ps(x); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  // max returns its second operand when either is NaN: NaN propagates, as in torch.
  static Vec relu(Vec a) { return _mm512_max_ps(_mm512_setzero_ps(), a); }
  // Compress in a register, then one masked store: a row end inside the vector costs no
  // branch (compress straight to memory is microcoded and slow on AMD).
  static void store(float* out, Vec a, const DwStore& s) {
    _mm512_mask_storeu_ps(out + s.dst, static_cast<__mmask16>((1u << s.count) - 1),
                          _mm512_maskz_compress_ps(static_cast<__mmask16>(s.keep), a));
  }
  static float sum(Vec a) { return _mm512_reduce_add_ps(a); }

  // Stride 2 (the only common stride above 1) moves 16 floats per permute; masked loads
  // and stores at the row's end never touch memory past its last element.
  static void copy_strided(const float* in, std::int64_t step, std::int64_t n, float* out) {
    if (step == 1) return static_cast<void>(std::memcpy(out, in, sizeof(float) * static_cast<std::size_t>(n)));
    if (step != 2) {
      for (std::int64_t i = 0; i < n; ++i) out[i] = in[i * step];
      return;
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (std::int64_t i = 0; i < n; i += 16) {
      const std::int64_t reads = 2 * (n - i) - 1;  // in[2i + reads - 1] is the last element used
      const __m512 lo = _mm512_maskz_loadu_ps(lanes_mask(reads), in + 2 * i);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes_mask(reads - 16), in + 2 * i + 16);
      _mm512_mask_storeu_ps(out + i, lanes_mask(n - i), _mm512_permutex2var_ps(lo, even, hi));
    }
  }
  static void spread_strided(const float* in, std::int64_t step, std::int64_t n, float* out) {
    if (step != 2) {
      for (std::int64_t i = 0; i < n; ++i) out[i * step] = in[i];
      return;
    }
    // Lane 2l of the first half takes in[l], lane 2l of the second in[8 + l]; the odd
    // lanes (the other phase's pixels) are masked off.
    const __m512i first = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(8));
    for (std::int64_t i = 0; i < n; i += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(lanes_mask(n - i), in + i);
      const std::int64_t writes = 2 * (n - i) - 1;
      _mm512_mask_storeu_ps(out + 2 * i, lanes_mask(writes) & 0x5555, _mm512_permutexvar_ps(first, v));
      _mm512_mask_storeu_ps(out + 2 * i + 16, lanes_mask(writes - 16) & 0x5555, _mm512_permutexvar_ps(second, v));
    }
  }

 private:
  // The first k lanes (none for k <= 0, all for k >= 16).
  static __mmask16 lanes_mask(std::int64_t k) {
    return static_cast<__mmask16>(k <= 0 ? 0u : k >= 16 ? 0xFFFFu : (1u << k) - 1);
  }
};

}  // namespace

const DwKernels f32_dwconv_4x16__avx512 = dwconv_kernels<Avx512>();

}  // namespace convkit
