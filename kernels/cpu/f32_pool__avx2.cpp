// float32 pooling kernels for AVX2: pool_kernels.h over 8-lane vectors.
#include <immintrin.h>

#include "pool_kernels.h"

namespace convkit {
namespace {

struct F32x8 {
  using T = float;
  using V = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones lanes where true
  static constexpr int width = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  template <int S>
  static V load_strided(const float* p, I offsets) {
    if constexpr (S == 1) {
      return load(p);
    } else if constexpr (S == 2) {
      // p[0], p[2], ..., p[14] from p[0..7] and p[7..14]: never past the last one needed.
      const V lo = load(p), hi = load(p + 7);
      const V pairs = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 2, 0));  // lo0 lo2 hi1 hi3 | lo4 lo6 hi5 hi7
      return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(pairs), _MM_SHUFFLE(3, 1, 2, 0)));
    } else {
      return _mm256_i32gather_ps(p, offsets, 4);
    }
  }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float reduce_add(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static M take(V v, V best) {
    return _mm256_and_ps(_mm256_cmp_ps(v, best, _CMP_NLE_UQ), _mm256_cmp_ps(best, best, _CMP_ORD_Q));
  }
  static V select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
  static I select_i(M m, I a, I b) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m));
  }
  static I set1_i(std::int64_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  static I iota_i(std::int64_t step) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), set1_i(step));
  }
  static void store_idx(std::int64_t* p, I i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(i, 1)));
  }
};

}  // namespace

const PoolKernels<float> f32_pool_kernels__avx2 = pool_kernel_table<F32x8>();

}  // namespace convkit
