// Vector traits for AVX-512 float32 kernels: 16 lanes, 32 zmm registers, mask registers.
// Included only by *__avx512.cpp files, which CMake compiles with the AVX-512 flags.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace convkit {

struct VecAvx512F32 {
  using Elem = float;
  using Vec = __m512;
  static constexpr int W = 16;
  static constexpr const char* isa = "avx512";

  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec set1(float x) { return _mm512_set1_ps(x); }
  static Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static Vec load(const float* p) { return _mm512_load_ps(p); }
  static void storeu(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  // max(0, x) returns its second operand when either is NaN, so NaN propagates.
  static Vec relu(Vec x) { return _mm512_max_ps(_mm512_setzero_ps(), x); }
  // Lanes [a, a + n) of v to dst[0, n): compress them down to lane 0 (register form,
  // cheap, unlike the memory form) and store under a mask touching only n elements.
  static void store_lanes(float* dst, Vec v, int a, int n) {
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    _mm512_mask_storeu_ps(dst, m, _mm512_maskz_compress_ps(static_cast<__mmask16>(m << a), v));
  }
  // dst[j*dst_ld + i] = src[i*src_ld + j] for a 16 x 16 block, in registers: pairs of
  // rows interleaved (unpack ps), then pairs of pairs (unpack pd), which leaves row
  // group g's four values of column 4L + m in 128-bit lane L of u[g][m]; a 4 x 4
  // transpose of 128-bit lanes (two shuffle_f32x4 rounds) finishes. 64 shuffles.
  static void transpose_block(const float* src, std::int64_t src_ld, float* dst, std::int64_t dst_ld) {
    __m512 a[16], t[16];
    for (int i = 0; i < 16; ++i) a[i] = _mm512_loadu_ps(src + i * src_ld);
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(a[i], a[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(a[i], a[i + 1]);
    }
    auto pd = [](__m512 v) { return _mm512_castps_pd(v); };
    __m512 u[4][4];  // [row group][m]
    for (int g = 0; g < 4; ++g) {
      const __m512* q = t + 4 * g;
      u[g][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(q[0]), pd(q[2])));
      u[g][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(q[0]), pd(q[2])));
      u[g][2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(q[1]), pd(q[3])));
      u[g][3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(q[1]), pd(q[3])));
    }
    for (int m = 0; m < 4; ++m) {
      const __m512 v0 = _mm512_shuffle_f32x4(u[0][m], u[1][m], 0x44), v1 = _mm512_shuffle_f32x4(u[0][m], u[1][m], 0xEE);
      const __m512 v2 = _mm512_shuffle_f32x4(u[2][m], u[3][m], 0x44), v3 = _mm512_shuffle_f32x4(u[2][m], u[3][m], 0xEE);
      _mm512_storeu_ps(dst + (0 + m) * dst_ld, _mm512_shuffle_f32x4(v0, v2, 0x88));
      _mm512_storeu_ps(dst + (4 + m) * dst_ld, _mm512_shuffle_f32x4(v0, v2, 0xDD));
      _mm512_storeu_ps(dst + (8 + m) * dst_ld, _mm512_shuffle_f32x4(v1, v3, 0x88));
      _mm512_storeu_ps(dst + (12 + m) * dst_ld, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
  }
};

}  // namespace convkit
