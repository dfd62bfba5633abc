// float32 pooling kernels for AVX-512 (F, BW, DQ, VL): pool_kernels.h over 16-lane vectors.
#include <immintrin.h>

#include "pool_kernels.h"

namespace convkit {
namespace {

struct F32x16 {
  using T = float;
  using V = __m512;
  using I = __m512i;
  using M = __mmask16;
  static constexpr int width = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  template <int S>
  static V load_strided(const float* p, I offsets) {
    if constexpr (S == 1) {
      return load(p);
    } else if constexpr (S == 2) {
      // p[0], p[2], ..., p[30]: the even lanes of p[0..15], the odd lanes of p[15..30]
      // (never past the last element needed), merged by one two-source permute.
      const I pick = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31);
      return _mm512_permutex2var_ps(load(p), pick, load(p + 15));
    } else {
      return _mm512_i32gather_ps(offsets, p, 4);
    }
  }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float reduce_add(V v) { return _mm512_reduce_add_ps(v); }
  static V max(V best, V v) { return _mm512_max_ps(v, best); }  // v > best ? v : best
  static void store_spread2(float* p, V v) {  // v0 0 v1 0 ... v15 0
    const I lo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    store(p, _mm512_maskz_permutexvar_ps(0x5555, lo, v));
    store(p + 16, _mm512_maskz_permutexvar_ps(0x5555, _mm512_add_epi32(lo, _mm512_set1_epi32(8)), v));
  }
  static M gt(V v, V best) { return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ); }
  static bool any_nan(V v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }
  static M eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M or_m(M a, M b) { return static_cast<M>(a | b); }
  static M and_m(M a, M b) { return static_cast<M>(a & b); }
  static V select(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
  static M lt_i(I a, I b) { return _mm512_cmplt_epi32_mask(a, b); }
  static M eq_i(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static I mul_i(I a, std::int64_t b) { return _mm512_mullo_epi32(a, set1_i(b)); }
  static I load_i(const std::int32_t* p) { return _mm512_loadu_si512(p); }
  static void store_i(std::int32_t* p, I v) { _mm512_storeu_si512(p, v); }
  template <int S>
  static I load_strided_i(const std::int32_t* p, I offsets) {  // the same lanes as load_strided
    return _mm512_castps_si512(load_strided<S>(reinterpret_cast<const float*>(p), offsets));
  }
  static I select_i(M m, I a, I b) { return _mm512_mask_blend_epi32(m, b, a); }
  static I set1_i(std::int64_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  static I iota_i(std::int64_t step) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), set1_i(step));
  }
  static void store_idx(std::int64_t* p, I i) {
    _mm512_storeu_si512(p, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(i)));
    _mm512_storeu_si512(p + 8, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(i, 1)));
  }
};

}  // namespace

const PoolKernels<float> f32_pool_kernels__avx512 = pool_kernel_table<F32x16>();

}  // namespace convkit
