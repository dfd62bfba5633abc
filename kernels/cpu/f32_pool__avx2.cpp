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
  static V max(V best, V v) { return _mm256_max_ps(v, best); }  // v > best ? v : best
  static void store_spread2(float* p, V v) {  // v0 0 v1 0 ... v7 0
    const V lo = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    const V hi = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
    store(p, _mm256_blend_ps(lo, zero(), 0xaa));
    store(p + 8, _mm256_blend_ps(hi, zero(), 0xaa));
  }
  static M gt(V v, V best) { return _mm256_cmp_ps(v, best, _CMP_GT_OQ); }
  static bool any_nan(V v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
  static M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M or_m(M a, M b) { return _mm256_or_ps(a, b); }
  static M and_m(M a, M b) { return _mm256_and_ps(a, b); }
  static V select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
  static M lt_i(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, a)); }
  static M eq_i(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }
  static I mul_i(I a, std::int64_t b) { return _mm256_mullo_epi32(a, set1_i(b)); }
  static I load_i(const std::int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store_i(std::int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  template <int S>
  static I load_strided_i(const std::int32_t* p, I offsets) {  // the same lanes as load_strided
    return _mm256_castps_si256(load_strided<S>(reinterpret_cast<const float*>(p), offsets));
  }
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
