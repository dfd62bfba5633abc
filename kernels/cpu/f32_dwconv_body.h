// The depthwise microkernels, written once over a vector-traits struct `A` that each
// instruction-set file (f32_dwconv__<isa>.cpp) defines and instantiates; the SIMD ones
// extend the engine's vec_<isa>.h traits:
//
//   A::Vec, A::W      a vector of W floats
//   A::tile           output vectors per register tile of the NCHW forward kernel
//   A::nhwc_tile      output pixels per register tile of the NHWC forward kernel
//   A::gw_taps        taps per pass of the grad-weight kernels (one accumulator each)
//   set1, loadu, fma(a, b, c) = a*b + c, relu (NaN passes through),
//   store(out, v, DwStore) (the kept lanes, compressed), sum (horizontal, fixed order),
//   storeu, store_lanes(dst, v, 0, n) (the first n lanes).
//
// Everything sits in an anonymous namespace: this header is compiled once per instruction
// set, and no copy may leak into another file's code (or the linker could pick an AVX-512
// copy for a portable caller). For the same reason it uses no std:: algorithms.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "f32_dwconv.h"

namespace convkit {
namespace {

// Forward / grad-input: A::tile output vectors stay in registers over all taps. Each tap
// costs one broadcast of its weight and, per vector, one unaligned load and one FMA, so
// the weight broadcast is amortised over the tile. Taps are a runtime count: a 3x3
// specialisation (weights held in registers across tiles) measured no faster, because
// the kernel is bound by loads, not by the broadcasts.
template <class A, int V>
inline void dwconv_tile(const float* planes, const std::int64_t* off, const float* w, std::int64_t taps,
                        const DwStore* map, float bias, bool relu, float* out) {
  typename A::Vec acc[V];
  for (int v = 0; v < V; ++v) acc[v] = A::set1(bias);
  for (std::int64_t t = 0; t < taps; ++t) {
    const typename A::Vec wt = A::set1(w[t]);
    const float* src = planes + off[t];
    for (int v = 0; v < V; ++v) acc[v] = A::fma(wt, A::loadu(src + v * A::W), acc[v]);
  }
  for (int v = 0; v < V; ++v) A::store(out, relu ? A::relu(acc[v]) : acc[v], map[v]);
}

template <class A>
void dwconv(const float* planes, const std::int64_t* off, const float* w, std::int64_t taps, std::int64_t nvec,
            const DwStore* map, float bias, bool relu, float* out) {
  std::int64_t v = 0;
  for (; v + A::tile <= nvec; v += A::tile)
    dwconv_tile<A, A::tile>(planes + v * A::W, off, w, taps, map + v, bias, relu, out);
  for (; v < nvec; ++v) dwconv_tile<A, 1>(planes + v * A::W, off, w, taps, map + v, bias, relu, out);
}

// Grad-weight: G taps at once, one vector accumulator each; every grad_output vector is
// loaded once per pass and multiplied into all G taps' input vectors.
template <class A, int G>
void dwconv_grad_weight_pass(const float* planes, const std::int64_t* off, const float* gy, std::int64_t nvec,
                             float* sums) {
  typename A::Vec acc[G];
  for (int t = 0; t < G; ++t) acc[t] = A::set1(0.0f);
  for (std::int64_t v = 0; v < nvec; ++v) {
    const std::int64_t p = v * A::W;
    const typename A::Vec g = A::loadu(gy + p);
    for (int t = 0; t < G; ++t) acc[t] = A::fma(g, A::loadu(planes + off[t] + p), acc[t]);
  }
  for (int t = 0; t < G; ++t) sums[t] += A::sum(acc[t]);
}

using DwGradWeightPass = void (*)(const float*, const std::int64_t*, const float*, std::int64_t, float*);

// The taps are split into the fewest passes of at most A::gw_taps, of near-equal size
// (25 taps -> 13 + 12), each run by the instantiation for its exact tap count.
template <class A, int... I>
void dwconv_grad_weight_passes(std::integer_sequence<int, I...>, const float* planes, const std::int64_t* off,
                               std::int64_t taps, const float* gy, std::int64_t nvec, float* sums) {
  static const DwGradWeightPass pass[] = {&dwconv_grad_weight_pass<A, I + 1>...};
  const std::int64_t passes = (taps + A::gw_taps - 1) / A::gw_taps;
  std::int64_t t = 0;
  for (std::int64_t left = passes; left > 0; --left) {
    const std::int64_t g = (taps - t + left - 1) / left;
    pass[g - 1](planes, off + t, gy, nvec, sums + t);
    t += g;
  }
}

template <class A>
void dwconv_grad_weight(const float* planes, const std::int64_t* off, std::int64_t taps, const float* gy,
                        std::int64_t nvec, float* sums) {
  dwconv_grad_weight_passes<A>(std::make_integer_sequence<int, A::gw_taps>(), planes, off, taps, gy, nvec, sums);
}

// NHWC forward / grad-input: P output pixels of one channel vector stay in registers over
// all taps; each tap costs one weight load and, per pixel, one aligned load and one FMA.
template <class A, int P>
inline void dwconv_nhwc_tile(const float* in, std::int64_t pix_step, const std::int64_t* off, const float* w,
                             std::int64_t taps, std::int64_t ld, typename A::Vec bias, bool relu, int lanes,
                             float* out, std::int64_t out_step) {
  typename A::Vec acc[P];
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (std::int64_t t = 0; t < taps; ++t) {
    const typename A::Vec wt = A::loadu(w + t * ld);
    const float* src = in + off[t];
    for (int p = 0; p < P; ++p) acc[p] = A::fma(wt, A::loadu(src + p * pix_step), acc[p]);
  }
  for (int p = 0; p < P; ++p) {
    const typename A::Vec v = relu ? A::relu(acc[p]) : acc[p];
    if (lanes == A::W)
      A::storeu(out + p * out_step, v);
    else
      A::store_lanes(out + p * out_step, v, 0, lanes);
  }
}

// Pixel tiles outer, channel vectors inner: a tile's input (its pixels' taps, all
// channels: ~17 KiB for 8 pixels, 3x3, 144 channels) stays in L1 while every channel
// vector reads it (sweeping all pixels per channel vector re-reads rows from L2: measured
// 8% slower on a 56x56x144 layer).
template <class A>
void dwconv_nhwc(const float* in, std::int64_t pix_step, const std::int64_t* off, const float* w, std::int64_t taps,
                 std::int64_t ld, const float* bias, bool relu, std::int64_t npix, std::int64_t channels, float* out,
                 std::int64_t out_step) {
  auto tiles = [&](auto pixels, std::int64_t p) {
    for (std::int64_t c = 0; c < channels; c += A::W)
      dwconv_nhwc_tile<A, decltype(pixels)::value>(in + p * pix_step + c, pix_step, off, w + c, taps, ld,
                                                   A::loadu(bias + c),
                                                   relu, static_cast<int>(channels - c < A::W ? channels - c : A::W),
                                                   out + p * out_step + c, out_step);
  };
  std::int64_t p = 0;
  for (; p + A::nhwc_tile <= npix; p += A::nhwc_tile) tiles(std::integral_constant<int, A::nhwc_tile>(), p);
  for (; p < npix; ++p) tiles(std::integral_constant<int, 1>(), p);
}

// NHWC grad-weight: for one channel vector, G taps' accumulators over every pixel.
template <class A, int G>
void dwconv_nhwc_grad_weight_pass(const float* in, std::int64_t pix_step, const std::int64_t* off, std::int64_t ld,
                                  const float* gy, std::int64_t npix, float* sums) {
  typename A::Vec acc[G];
  for (int t = 0; t < G; ++t) acc[t] = A::set1(0.0f);
  for (std::int64_t p = 0; p < npix; ++p) {
    const typename A::Vec g = A::loadu(gy + p * ld);
    for (int t = 0; t < G; ++t) acc[t] = A::fma(g, A::loadu(in + p * pix_step + off[t]), acc[t]);
  }
  const typename A::Vec one = A::set1(1.0f);
  for (int t = 0; t < G; ++t) A::storeu(sums + t * ld, A::fma(acc[t], one, A::loadu(sums + t * ld)));
}

using DwNhwcGradWeightPass = void (*)(const float*, std::int64_t, const std::int64_t*, std::int64_t, const float*,
                                      std::int64_t, float*);

template <class A, int... I>
void dwconv_nhwc_grad_weight_passes(std::integer_sequence<int, I...>, const float* in, std::int64_t pix_step,
                                    const std::int64_t* off, std::int64_t taps, std::int64_t ld, const float* gy,
                                    std::int64_t npix, float* sums) {
  static const DwNhwcGradWeightPass pass[] = {&dwconv_nhwc_grad_weight_pass<A, I + 1>...};
  const std::int64_t passes = (taps + A::gw_taps - 1) / A::gw_taps;
  for (std::int64_t c = 0; c < ld; c += A::W) {
    std::int64_t t = 0;
    for (std::int64_t left = passes; left > 0; --left) {
      const std::int64_t g = (taps - t + left - 1) / left;
      pass[g - 1](in + c, pix_step, off + t, ld, gy + c, npix, sums + t * ld + c);
      t += g;
    }
  }
}

template <class A>
void dwconv_nhwc_grad_weight(const float* in, std::int64_t pix_step, const std::int64_t* off, std::int64_t taps,
                             std::int64_t ld, const float* gy, std::int64_t npix, float* sums) {
  dwconv_nhwc_grad_weight_passes<A>(std::make_integer_sequence<int, A::gw_taps>(), in, pix_step, off, taps, ld, gy,
                                    npix, sums);
}

template <class A>
constexpr DwKernels dwconv_kernels() {
  return DwKernels{A::W, &dwconv<A>, &dwconv_grad_weight<A>, &dwconv_nhwc<A>, &dwconv_nhwc_grad_weight<A>};
}

}  // namespace
}  // namespace convkit
