// The depthwise microkernels, written once over a vector-traits struct `A` that each
// instruction-set file (f32_dwconv__<isa>.cpp) defines and instantiates; the SIMD ones
// extend the engine's vec_<isa>.h traits:
//
//   A::Vec, A::W      a vector of W floats
//   A::tile           output vectors per register tile of the forward kernel
//   A::gw_taps        taps per pass of the grad-weight kernel (one accumulator each)
//   set1, loadu, fma(a, b, c) = a*b + c, relu (NaN passes through),
//   store(out, v, DwStore) (the kept lanes, compressed), sum (horizontal, fixed order).
//
// Everything sits in an anonymous namespace: this header is compiled once per instruction
// set, and no copy may leak into another file's code (or the linker could pick an AVX-512
// copy for a portable caller). For the same reason it uses no std:: algorithms.
#pragma once
#include <cstdint>
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

template <class A>
constexpr DwKernels dwconv_kernels() {
  return DwKernels{A::W, &dwconv<A>, &dwconv_grad_weight<A>};
}

}  // namespace
}  // namespace convkit
