// Depthwise microkernels, AVX2 + FMA: tiles of 8 vectors of 8 pixels (8 accumulators and
// the broadcast weight of 16 registers; measured 5% faster than tiles of 4, 25% than 2).
#include <immintrin.h>

#include <cstring>

#include "f32_dwconv_body.h"

namespace convkit {
namespace {

// For each 8-bit keep mask, the indices of its set lanes in order, 4 bits each: the
// permutation that packs the kept lanes to the front (AVX2 has no compress instruction).
struct CompressIndices {
  std::uint32_t packed[256];
  constexpr CompressIndices() : packed{} {
    for (int m = 0; m < 256; ++m)
      for (int l = 0, n = 0; l < 8; ++l)
        if (m >> l & 1) packed[m] |= static_cast<std::uint32_t>(l) << (4 * n++);
  }
};
constexpr CompressIndices kCompress{};

struct Avx2 {
  using Vec = __m256;
  static constexpr int lanes = 8, tile = 8, gw_taps = 12;

  static Vec broadcast(float x) { return _mm256_set1_ps(x); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  // max returns its second operand when either is NaN: NaN propagates, as in torch.
  static Vec relu(Vec a) { return _mm256_max_ps(_mm256_setzero_ps(), a); }
  // Full vectors (most of them) are plain stores; a vector holding a row end is packed by
  // a permutation and written by a masked store, which never touches masked-off memory.
  static void store(float* out, Vec a, const DwStore& s) {
    if (s.count == 8) return _mm256_storeu_ps(out + s.dst, a);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i idx = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kCompress.packed[s.keep])), shifts),
        _mm256_set1_epi32(7));
    const __m256i first = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(s.count)),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(out + s.dst, first, _mm256_permutevar8x32_ps(a, idx));
  }
  static float sum(Vec a) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }

  // Stride 2 deinterleaves 8 floats per shuffle + lane permute while a full 16 floats
  // remain; the row's end, other strides and the spread go element by element.
  static void copy_strided(const float* in, std::int64_t step, std::int64_t n, float* out) {
    if (step == 1) return static_cast<void>(std::memcpy(out, in, sizeof(float) * static_cast<std::size_t>(n)));
    std::int64_t i = 0;
    if (step == 2) {
      for (; i + 8 < n; i += 8) {  // reads in[2i .. 2i + 15]; in[2n - 2] is the last element used
        const __m256 s = _mm256_shuffle_ps(_mm256_loadu_ps(in + 2 * i), _mm256_loadu_ps(in + 2 * i + 8),
                                           _MM_SHUFFLE(2, 0, 2, 0));  // x0 x2 x8 x10 | x4 x6 x12 x14
        _mm256_storeu_ps(out + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0))));
      }
    }
    for (; i < n; ++i) out[i] = in[i * step];
  }
  static void spread_strided(const float* in, std::int64_t step, std::int64_t n, float* out) {
    for (std::int64_t i = 0; i < n; ++i) out[i * step] = in[i];
  }
};

}  // namespace

const DwKernels f32_dwconv_8x8__avx2 = dwconv_kernels<Avx2>();

}  // namespace convkit
