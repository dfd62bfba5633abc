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
  static M take(V v, V best) {
    return _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(best, best, _CMP_ORD_Q), v, best, _CMP_NLE_UQ);
  }
  static V select(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
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
