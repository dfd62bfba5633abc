// Vector traits for AVX-512 float32 kernels: 16 lanes, 32 zmm registers, mask registers.
// Included only by *__avx512.cpp files, which CMake compiles with the AVX-512 flags.
#pragma once
#include <immintrin.h>

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
};

}  // namespace convkit
