// Depthwise microkernels, AVX-512: tiles of 4 vectors of 16 pixels. Every tap is an
// unaligned load that nearly always spans two cache lines (one per cycle on Zen 5, against
// two FMAs), so the kernel runs at ~1.5 cycles per FMA whatever the tile: 4 measured 5%
// faster than 6, 8, 12 or 16; aligned loads + permutes, or reusing each loaded row for
// 4 output rows, measured at most 9% faster (56-wide planes) and slower on 14- and 28-wide.
#include "f32_dwconv_body.h"
#include "vec_avx512.h"

namespace convkit {
namespace {

struct Avx512 : VecAvx512F32 {
  static constexpr int tile = 4, nhwc_tile = 8, nhwc_3x3_tile = 16, gw_taps = 16;

  // Compress in a register, then one masked store: a row end inside the vector costs no
  // branch (compress straight to memory is microcoded and slow on AMD).
  static void store(float* out, Vec a, const DwStore& s) {
    _mm512_mask_storeu_ps(out + s.dst, static_cast<__mmask16>((1u << s.count) - 1),
                          _mm512_maskz_compress_ps(static_cast<__mmask16>(s.keep), a));
  }
  static void pin(Vec& v) { asm("" : "+v"(v)); }
  static float sum(Vec a) { return _mm512_reduce_add_ps(a); }
  using Mask = __mmask16;
  static Mask range_mask(int lo, int hi) { return static_cast<Mask>(((1u << hi) - 1) & ~((1u << lo) - 1)); }
  static Vec load_masked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static Vec evens(Vec a, Vec b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
  }
  static Vec odds(Vec a, Vec b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
  }
  static Vec interleave_lo(Vec a, Vec b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), b);
  }
  static Vec interleave_hi(Vec a, Vec b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
                                  b);
  }
  static Vec shift1(Vec a, Vec b) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(b), _mm512_castps_si512(a), 1));
  }
  static bool stream_aligned(const float* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }
  static void stream(float* p, Vec v) { _mm512_stream_ps(p, v); }
  static void stream_fence() { _mm_sfence(); }
  static Vec load_lanes(const float* p, int n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
};

}  // namespace

const DwKernels f32_dwconv_4x16__avx512 = dwconv_kernels<Avx512>();

}  // namespace convkit
