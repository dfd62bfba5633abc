// Vector traits for AVX2 + FMA float32 kernels: 8 lanes, 16 ymm registers.
// Included only by *__avx2.cpp files, which CMake compiles with -mavx2 -mfma.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace convkit {

struct VecAvx2F32 {
  using Elem = float;
  using Vec = __m256;
  static constexpr int W = 8;
  static constexpr const char* isa = "avx2";

  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static Vec load(const float* p) { return _mm256_load_ps(p); }
  static void storeu(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  // max(0, x) returns its second operand when either is NaN, so NaN propagates.
  static Vec relu(Vec x) { return _mm256_max_ps(_mm256_setzero_ps(), x); }
  // Lanes [a, a + n) of v to dst[0, n): rotate lane a down to lane 0, then a masked
  // store that touches only the n destination elements.
  static void store_lanes(float* dst, Vec v, int a, int n) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const Vec shifted = _mm256_permutevar8x32_ps(v, _mm256_add_epi32(iota, _mm256_set1_epi32(a)));
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), iota);
    _mm256_maskstore_ps(dst, mask, shifted);
  }
  // dst[j*dst_ld + i] = src[i*src_ld + j] for an 8 x 8 block, in registers: pairs of rows
  // interleaved (unpack), then pairs of pairs (shuffle) leave row group g's four values
  // of column 4L + m in 128-bit lane L of u[g][m]; swapping 128-bit lanes finishes.
  static void transpose_block(const float* src, std::int64_t src_ld, float* dst, std::int64_t dst_ld) {
    __m256 a[8], t[8], u[2][4];
    for (int i = 0; i < 8; ++i) a[i] = _mm256_loadu_ps(src + i * src_ld);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(a[i], a[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(a[i], a[i + 1]);
    }
    for (int g = 0; g < 2; ++g) {
      const __m256* q = t + 4 * g;
      u[g][0] = _mm256_shuffle_ps(q[0], q[2], 0x44);
      u[g][1] = _mm256_shuffle_ps(q[0], q[2], 0xEE);
      u[g][2] = _mm256_shuffle_ps(q[1], q[3], 0x44);
      u[g][3] = _mm256_shuffle_ps(q[1], q[3], 0xEE);
    }
    for (int m = 0; m < 4; ++m) {
      _mm256_storeu_ps(dst + m * dst_ld, _mm256_permute2f128_ps(u[0][m], u[1][m], 0x20));
      _mm256_storeu_ps(dst + (4 + m) * dst_ld, _mm256_permute2f128_ps(u[0][m], u[1][m], 0x31));
    }
  }
};

}  // namespace convkit
