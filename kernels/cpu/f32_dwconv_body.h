// The depthwise microkernels, written once over a vector-traits struct `A` that each
// instruction-set file (f32_dwconv__<isa>.cpp) defines and instantiates; the SIMD ones
// extend the engine's vec_<isa>.h traits:
//
//   A::Vec, A::W      a vector of W floats
//   A::tile           output vectors per register tile of the NCHW forward kernel
//   A::nhwc_tile      output pixels per register tile of the NHWC forward kernel
//   A::nhwc_3x3_tile  the same for its 3x3 kernel (which also holds 9 weight vectors)
//   A::gw_taps        taps per pass of the grad-weight kernels (one accumulator each)
//   set1, loadu, fma(a, b, c) = a*b + c, relu (NaN passes through),
//   store(out, v, DwStore) (the kept lanes, compressed), sum (horizontal, fixed order),
//   storeu, store_lanes(dst, v, 0, n) (the first n lanes), load_lanes(p, n) (the first n
//   lanes, zeros after; reads nothing past p[n - 1]), Mask, range_mask(lo, hi) and
//   load_masked(p, mask) (lanes [lo, hi) from p, zeros elsewhere, reading nothing else),
//   evens(a, b) / odds(a, b) (the even / odd lanes of a then b), interleave_lo(a, b) /
//   interleave_hi(a, b) (a0 b0 a1 b1 ... from the first / second half of a and b: the
//   inverse of evens / odds), shift1(a, b) (a's lanes 1.. then b's lane 0), pin(v) (keeps v
//   in a register: an empty asm, so the compiler cannot fold its load into every
//   instruction that uses it), stream_aligned(p), stream(p, v) (a non-temporal store to
//   a stream_aligned p) and stream_fence() (orders those stores before later ones).
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
// all taps; each tap costs one weight load and, per pixel, one load and one FMA. The input
// may be the caller's array itself (its pixels `channels` apart): a last, partial channel
// vector is then read under a mask (Full = false), never past the pixel's channels.
template <class A, bool Full>
inline typename A::Vec load_channels(const float* p, int lanes) {
  if constexpr (Full) {
    (void)lanes;
    return A::loadu(p);
  } else {
    return A::load_lanes(p, lanes);
  }
}

// The NHWC tiles' epilogue: ReLU if asked, then P output pixels' channel vectors (a
// partial last vector under its lane mask).
template <class A, int P, bool Full>
inline void store_nhwc_tile(const typename A::Vec* acc, bool relu, int lanes, float* out, std::int64_t out_step) {
  for (int p = 0; p < P; ++p) {
    const typename A::Vec v = relu ? A::relu(acc[p]) : acc[p];
    if constexpr (Full)
      A::storeu(out + p * out_step, v);
    else
      A::store_lanes(out + p * out_step, v, 0, lanes);
  }
}

template <class A, int P, bool Full>
inline void dwconv_nhwc_tile(const float* in, std::int64_t pix_step, const std::int64_t* off, const float* w,
                             std::int64_t taps, std::int64_t ld, typename A::Vec bias, bool relu, int lanes,
                             float* out, std::int64_t out_step) {
  typename A::Vec acc[P];
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (std::int64_t t = 0; t < taps; ++t) {
    const typename A::Vec wt = A::loadu(w + t * ld);
    const float* src = in + off[t];
    for (int p = 0; p < P; ++p) acc[p] = A::fma(wt, load_channels<A, Full>(src + p * pix_step, lanes), acc[p]);
  }
  store_nhwc_tile<A, P, Full>(acc, relu, lanes, out, out_step);
}

// NHWC 3x3, dilation 1, stride S (MobileNet's depthwise layers): along a row, the P
// pixels of a tile read (P-1)*S + 3 input pixels, each loaded once and multiplied into
// every output pixel whose window holds it, with the 9 weights in registers: per output
// vector 9 FMAs and ((P-1)*S + 3) * 3 / P loads (3.75 at P = 8, stride 1) instead of the
// generic tile's 9 + 9/P.
template <class A, int P, int S, bool Full>
inline void dwconv_nhwc_3x3_tile(const float* in, std::int64_t e, const std::int64_t* row_off,
                                 const typename A::Vec* wv, typename A::Vec bias, bool relu, int lanes, float* out,
                                 std::int64_t out_step) {
  typename A::Vec acc[P];
  for (int p = 0; p < P; ++p) acc[p] = bias;
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    const float* src = in + row_off[i];
#pragma GCC unroll 64
    for (int q = 0; q < (P - 1) * S + 3; ++q, src += e) {
      // One pointer per row, bumped: left alone, GCC hoists all ~50 input addresses out
      // of the caller's channel loop and spills them to the stack (a reload per load).
      asm("" : "+r"(src));
      typename A::Vec v = load_channels<A, Full>(src, lanes);
      A::pin(v);  // in a register: GCC would fold the load into each of its 3 FMAs
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j)
        if (q - j >= 0 && (q - j) % S == 0 && (q - j) / S < P)
          acc[(q - j) / S] = A::fma(wv[i * 3 + j], v, acc[(q - j) / S]);
    }
  }
  store_nhwc_tile<A, P, Full>(acc, relu, lanes, out, out_step);
}

template <class A, int S>
void dwconv_nhwc_3x3(const float* in, std::int64_t e, const std::int64_t* off, const float* w, std::int64_t ld,
                     const float* bias, bool relu, std::int64_t npix, std::int64_t channels, float* out,
                     std::int64_t out_step) {
  const std::int64_t row_off[3] = {off[0], off[3], off[6]};
  auto tiles = [&](auto pixels, std::int64_t p) {
    constexpr int P = decltype(pixels)::value;
    for (std::int64_t c = 0; c < channels; c += A::W) {
      typename A::Vec wv[9];
      for (int t = 0; t < 9; ++t) wv[t] = A::loadu(w + t * ld + c);
      const float* src = in + p * S * e + c;
      float* dst = out + p * out_step + c;
      if (channels - c >= A::W)
        dwconv_nhwc_3x3_tile<A, P, S, true>(src, e, row_off, wv, A::loadu(bias + c), relu, A::W, dst, out_step);
      else
        dwconv_nhwc_3x3_tile<A, P, S, false>(src, e, row_off, wv, A::loadu(bias + c), relu,
                                             static_cast<int>(channels - c), dst, out_step);
    }
  };
  std::int64_t p = 0;
  // Stride 2 reads twice the pixels per tile: half the tile keeps a tile's input rows in L1.
  constexpr int T = S == 1 ? A::nhwc_3x3_tile : A::nhwc_3x3_tile / 2;
  for (; p + T <= npix; p += T) tiles(std::integral_constant<int, T>(), p);
  for (; p + 4 <= npix; p += 4) tiles(std::integral_constant<int, 4>(), p);
  for (; p < npix; ++p) tiles(std::integral_constant<int, 1>(), p);
}

// Whether taps `off` are a 3x3 window of dilation 1 whose pixels lie e apart, and pixels
// step 1 or 2 of them: 0 if not, else the stride.
inline int nhwc_3x3_stride(const std::int64_t* off, std::int64_t taps, std::int64_t pix_step, std::int64_t& e) {
  if (taps != 9) return 0;
  e = off[1] - off[0];
  for (int t = 0; t < 9; ++t)
    if (off[t] != off[t / 3 * 3] + (t % 3) * e) return 0;
  return pix_step == e ? 1 : pix_step == 2 * e ? 2 : 0;
}

// Pixel tiles outer, channel vectors inner: a tile's input (its pixels' taps, all
// channels: ~17 KiB for 8 pixels, 3x3, 144 channels) stays in L1 while every channel
// vector reads it (sweeping all pixels per channel vector re-reads rows from L2: measured
// 8% slower on a 56x56x144 layer).
template <class A>
void dwconv_nhwc(const float* in, std::int64_t pix_step, const std::int64_t* off, const float* w, std::int64_t taps,
                 std::int64_t ld, const float* bias, bool relu, std::int64_t npix, std::int64_t channels, float* out,
                 std::int64_t out_step) {
  std::int64_t e = 0;
  switch (nhwc_3x3_stride(off, taps, pix_step, e)) {
    case 1:
      return dwconv_nhwc_3x3<A, 1>(in, e, off, w, ld, bias, relu, npix, channels, out, out_step);
    case 2:
      return dwconv_nhwc_3x3<A, 2>(in, e, off, w, ld, bias, relu, npix, channels, out, out_step);
    default:
      break;
  }
  const std::int64_t full = channels / A::W * A::W;
  const int tail = static_cast<int>(channels - full);
  auto tiles = [&](auto pixels, std::int64_t p) {
    constexpr int P = decltype(pixels)::value;
    const float* src = in + p * pix_step;
    float* dst = out + p * out_step;
    for (std::int64_t c = 0; c < full; c += A::W)
      dwconv_nhwc_tile<A, P, true>(src + c, pix_step, off, w + c, taps, ld, A::loadu(bias + c), relu, A::W,
                                   dst + c, out_step);
    if (tail)
      dwconv_nhwc_tile<A, P, false>(src + full, pix_step, off, w + full, taps, ld, A::loadu(bias + full), relu,
                                    tail, dst + full, out_step);
  };
  std::int64_t p = 0;
  for (; p + A::nhwc_tile <= npix; p += A::nhwc_tile) tiles(std::integral_constant<int, A::nhwc_tile>(), p);
  for (; p < npix; ++p) tiles(std::integral_constant<int, 1>(), p);
}

// NHWC grad-weight: for one channel vector, G taps' accumulators over every pixel.
template <class A, int G, bool Full>
void dwconv_nhwc_grad_weight_pass(const float* in, std::int64_t pix_step, const std::int64_t* off, const float* gy,
                                  std::int64_t gy_step, std::int64_t npix, int lanes, float* sums, std::int64_t ld) {
  typename A::Vec acc[G];
  for (int t = 0; t < G; ++t) acc[t] = A::set1(0.0f);
  for (std::int64_t p = 0; p < npix; ++p) {
    const typename A::Vec g = load_channels<A, Full>(gy + p * gy_step, lanes);
    for (int t = 0; t < G; ++t)
      acc[t] = A::fma(g, load_channels<A, Full>(in + p * pix_step + off[t], lanes), acc[t]);
  }
  const typename A::Vec one = A::set1(1.0f);
  for (int t = 0; t < G; ++t) A::storeu(sums + t * ld, A::fma(acc[t], one, A::loadu(sums + t * ld)));
}

using DwNhwcGradWeightPass = void (*)(const float*, std::int64_t, const std::int64_t*, const float*, std::int64_t,
                                      std::int64_t, int, float*, std::int64_t);

// The taps in the fewest passes of at most A::gw_taps (as the NCHW grad-weight), per
// channel vector; the last, partial one reads under a mask.
template <class A, int... I>
void dwconv_nhwc_grad_weight_passes(std::integer_sequence<int, I...>, const float* in, std::int64_t pix_step,
                                    const std::int64_t* off, std::int64_t taps, std::int64_t ld, const float* gy,
                                    std::int64_t gy_step, std::int64_t npix, std::int64_t channels, float* sums) {
  static const DwNhwcGradWeightPass full[] = {&dwconv_nhwc_grad_weight_pass<A, I + 1, true>...};
  static const DwNhwcGradWeightPass part[] = {&dwconv_nhwc_grad_weight_pass<A, I + 1, false>...};
  const std::int64_t passes = (taps + A::gw_taps - 1) / A::gw_taps;
  for (std::int64_t c = 0; c < channels; c += A::W) {
    const int lanes = static_cast<int>(channels - c < A::W ? channels - c : A::W);
    const DwNhwcGradWeightPass* pass = lanes == A::W ? full : part;
    std::int64_t t = 0;
    for (std::int64_t left = passes; left > 0; --left) {
      const std::int64_t g = (taps - t + left - 1) / left;
      pass[g - 1](in + c, pix_step, off + t, gy + c, gy_step, npix, lanes, sums + t * ld + c, ld);
      t += g;
    }
  }
}

// NHWC grad-weight, 3x3, dilation 1, stride S: the transpose of dwconv_nhwc_3x3_tile. P
// grad_output vectors in registers, each input pixel of a row loaded once and multiplied
// into the taps whose window puts it over one of them; the 9 sums stay in registers over
// the tile (loaded and stored once per tile and channel vector).
template <class A, int P, int S, bool Full>
inline void dwconv_nhwc_grad_weight_3x3_tile(const float* in, std::int64_t e, const std::int64_t* row_off,
                                             const float* gy, std::int64_t gy_step, int lanes, float* sums,
                                             std::int64_t ld) {
  typename A::Vec g[P], acc[9];
  for (int p = 0; p < P; ++p) g[p] = load_channels<A, Full>(gy + p * gy_step, lanes);
  for (int t = 0; t < 9; ++t) acc[t] = A::loadu(sums + t * ld);
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    const float* src = in + row_off[i];
#pragma GCC unroll 64
    for (int q = 0; q < (P - 1) * S + 3; ++q, src += e) {
      asm("" : "+r"(src));  // as in dwconv_nhwc_3x3_tile
      typename A::Vec v = load_channels<A, Full>(src, lanes);
      A::pin(v);
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j)
        if (q - j >= 0 && (q - j) % S == 0 && (q - j) / S < P) acc[i * 3 + j] = A::fma(g[(q - j) / S], v, acc[i * 3 + j]);
    }
  }
  for (int t = 0; t < 9; ++t) A::storeu(sums + t * ld, acc[t]);
}

template <class A, int S>
void dwconv_nhwc_grad_weight_3x3(const float* in, std::int64_t e, const std::int64_t* off, std::int64_t ld,
                                 const float* gy, std::int64_t gy_step, std::int64_t npix, std::int64_t channels,
                                 float* sums) {
  const std::int64_t row_off[3] = {off[0], off[3], off[6]};
  auto tiles = [&](auto pixels, std::int64_t p) {
    constexpr int P = decltype(pixels)::value;
    for (std::int64_t c = 0; c < channels; c += A::W) {
      const float* src = in + p * S * e + c;
      const float* gp = gy + p * gy_step + c;
      if (channels - c >= A::W)
        dwconv_nhwc_grad_weight_3x3_tile<A, P, S, true>(src, e, row_off, gp, gy_step, A::W, sums + c, ld);
      else
        dwconv_nhwc_grad_weight_3x3_tile<A, P, S, false>(src, e, row_off, gp, gy_step,
                                                         static_cast<int>(channels - c), sums + c, ld);
    }
  };
  std::int64_t p = 0;
  // Stride 2 reads twice the pixels per tile: half the tile keeps a tile's input rows in L1.
  constexpr int T = S == 1 ? A::nhwc_3x3_tile : A::nhwc_3x3_tile / 2;
  for (; p + T <= npix; p += T) tiles(std::integral_constant<int, T>(), p);
  for (; p + 4 <= npix; p += 4) tiles(std::integral_constant<int, 4>(), p);
  for (; p < npix; ++p) tiles(std::integral_constant<int, 1>(), p);
}

template <class A>
void dwconv_nhwc_grad_weight(const float* in, std::int64_t pix_step, const std::int64_t* off, std::int64_t taps,
                             std::int64_t ld, const float* gy, std::int64_t gy_step, std::int64_t npix,
                             std::int64_t channels, float* sums) {
  std::int64_t e = 0;
  switch (nhwc_3x3_stride(off, taps, pix_step, e)) {
    case 1:
      return dwconv_nhwc_grad_weight_3x3<A, 1>(in, e, off, ld, gy, gy_step, npix, channels, sums);
    default:  // stride 2 measured no faster in tiles (its sums' loads and stores) than in one pass
      break;
  }
  dwconv_nhwc_grad_weight_passes<A>(std::make_integer_sequence<int, A::gw_taps>(), in, pix_step, off, taps, ld, gy,
                                    gy_step, npix, channels, sums);
}

// NCHW, 3x3, dilation 1, stride S = 1 or 2, read in place (no padded planes: packing the
// stride phases took 63% of the stride-2 layer's time, the padded plane ~25% of the
// stride-1 one's). Output columns [o, o + W) read, for tap column j, input columns
// s + j + S*l (s = S*o - pl, lane l). Stride 1: three unaligned loads. Stride 2: for j = 0
// and 1 the even and odd lanes of the 2W columns from s (two loads, one deinterleave
// each), for j = 2 the even lanes shifted down one with column s + 2W appended. Columns
// outside the image load as zeros (masked loads, which touch nothing outside the image),
// rows outside it are skipped: no padding copy and no edge code. Lanes past OW are
// computed from columns past the window and not stored.

// A load of the n <= A::W columns from s of any row of W: the lanes inside [0, W), zeros
// elsewhere. Worked out once for a column position and used on every row (working it
// out at each load cost 4x the FMAs' time on 56-wide rows). A load wholly inside the
// row is a plain one: masked loads that miss the caches ran ~3x slower than plain ones
// here (stride 2 at batch 8, its 14 MB input streamed from memory).
template <class A>
struct ColumnLoad {
  typename A::Mask mask;
  std::int64_t at;  // s, or 0 when no lane is inside (nothing is read, but the address stays in the row)
  bool full;        // all A::W lanes inside: a plain load

  ColumnLoad() = default;
  ColumnLoad(std::int64_t s, std::int64_t n, std::int64_t W) {
    const std::int64_t lo = s >= 0 ? 0 : -s < n ? -s : n, hi = W - s < lo ? lo : W - s < n ? W - s : n;
    mask = A::range_mask(static_cast<int>(lo), static_cast<int>(hi));
    at = hi > lo ? s : 0;
    full = lo == 0 && hi == A::W;
  }
  typename A::Vec operator()(const float* row) const {
    return full ? A::loadu(row + at) : A::load_masked(row + at, mask);
  }
};

// A vector's window columns come from three loads of a row: load k reads load_width(k)
// columns from s + load_at(k) (stride 1: the three taps' columns; stride 2: 2W columns to
// deinterleave, then the one column past them).
template <class A, int S>
constexpr std::int64_t load_at(int k) {
  return S == 1 ? k : k * A::W;
}
template <class A, int S>
constexpr std::int64_t load_width(int k) {
  return S == 2 && k == 2 ? 1 : A::W;
}

// Columns s + j + S*l (lane l) of a row, j = 0, 1, 2, into col[j]: with plain loads when
// the vector lies inside the row (Edge = false), else through `loads`.
template <class A, int S, bool Edge>
inline void window_columns(const float* row, std::int64_t s, const ColumnLoad<A>* loads, typename A::Vec* col) {
  typename A::Vec v[3];
  for (int k = 0; k < 3; ++k) {
    const float* p = row + s + load_at<A, S>(k);
    if constexpr (Edge)
      v[k] = loads[k](row);
    else
      v[k] = load_width<A, S>(k) == 1 ? A::set1(*p) : A::loadu(p);
  }
  if constexpr (S == 1) {
    for (int j = 0; j < 3; ++j) col[j] = v[j];
  } else {
    col[0] = A::evens(v[0], v[1]);
    col[1] = A::odds(v[0], v[1]);
    col[2] = A::shift1(col[0], v[2]);
  }
}

// R output rows at once (rows h0 + S*q of their windows, q < R): each of their
// S*(R-1) + 3 input rows inside the image is loaded once (columns from s0) and handed to
// fn(q, i, col) for every output row q whose window holds it as tap row i (stride 1,
// R = 8: 10 row loads for 8 output rows instead of 24). Unrolled, so that q and i are
// constants and the caller's weights or sums stay in registers. Edge = false: every row
// inside the image and every column inside the rows, so no tests and no masks.
template <class A, int S, int R, bool Edge, typename Fn>
inline void window_rows(const float* x, std::int64_t H, std::int64_t W, std::int64_t h0, std::int64_t s0,
                        const ColumnLoad<A>* loads, const Fn& fn) {
#pragma GCC unroll 32
  for (int r = 0; r < S * (R - 1) + 3; ++r) {
    if constexpr (Edge)
      if (h0 + r < 0 || h0 + r >= H) continue;
    typename A::Vec col[3];
    window_columns<A, S, Edge>(x + (h0 + r) * W, s0, loads, col);
#pragma GCC unroll 16
    for (int q = 0; q < R; ++q)
      if (r - S * q >= 0 && r - S * q < 3) fn(q, r - S * q, col);
  }
}

template <class A, int S, int R, typename Fn>
inline void window_block(const float* x, std::int64_t H, std::int64_t W, std::int64_t h0, std::int64_t s0,
                         const Fn& fn) {
  ColumnLoad<A> loads[3];
  bool inside = true;
  for (int k = 0; k < 3; ++k) {
    loads[k] = ColumnLoad<A>(s0 + load_at<A, S>(k), load_width<A, S>(k), W);
    inside = inside && s0 + load_at<A, S>(k) >= 0 && s0 + load_at<A, S>(k) + load_width<A, S>(k) <= W;
  }
  if (inside && h0 >= 0 && h0 + S * (R - 1) + 3 <= H)
    window_rows<A, S, R, false>(x, H, W, h0, s0, loads, fn);
  else
    window_rows<A, S, R, true>(x, H, W, h0, s0, loads, fn);
}

// Rows per block: 8 at stride 1 (measured 1.24x over one row at a time with AVX-512,
// 1.06x with AVX2, whose 16 registers then spill the weights; 14 spilled and ran at
// half speed), 2 at stride 2 (1.2x).
template <int S>
constexpr int kRows3x3 = S == 1 ? 8 : 2;

// Output rows [oh0, oh1) in blocks of kRows3x3 rows, then one at a time:
// fn(integral_constant R, oh) per block.
template <int S, typename Fn>
inline void row_blocks_3x3(std::int64_t oh0, std::int64_t oh1, const Fn& fn) {
  std::int64_t oh = oh0;
  for (; oh + kRows3x3<S> <= oh1; oh += kRows3x3<S>) fn(std::integral_constant<int, kRows3x3<S>>(), oh);
  for (; oh < oh1; ++oh) fn(std::integral_constant<int, 1>(), oh);
}

template <class A, int S>
void dwconv_3x3(const float* x, std::int64_t H, std::int64_t W, std::int64_t pt, std::int64_t pl, const float* w,
                float bias, bool relu, std::int64_t oh0, std::int64_t oh1, std::int64_t OW, float* y) {
  using Vec = typename A::Vec;
  Vec wv[9];
  for (int t = 0; t < 9; ++t) wv[t] = A::set1(w[t]);
  row_blocks_3x3<S>(oh0, oh1, [&](auto rows, std::int64_t oh) {
    constexpr int R = decltype(rows)::value;
    for (std::int64_t o = 0; o < OW; o += A::W) {
      Vec acc[R];
      for (int q = 0; q < R; ++q) acc[q] = A::set1(bias);
      window_block<A, S, R>(x, H, W, S * oh - pt, S * o - pl, [&](int q, int i, const Vec* col) {
        for (int j = 0; j < 3; ++j) acc[q] = A::fma(wv[3 * i + j], col[j], acc[q]);
      });
      for (int q = 0; q < R; ++q) {
        const Vec v = relu ? A::relu(acc[q]) : acc[q];
        float* dst = y + (oh + q) * OW + o;
        if (OW - o >= A::W)
          A::storeu(dst, v);
        else
          A::store_lanes(dst, v, 0, static_cast<int>(OW - o));
      }
    }
  });
}

// Its grad-weight: the same reads, each multiplied by its output row's grad_output vector
// (zeros past OW) into the tap's sum. At stride 1 it runs 1.7x faster than the packed
// planes' kernel (16 taps a pass over flat pixels), one thread, MobileNet's 56x56x144.
template <class A, int S>
void dwconv_3x3_grad_weight(const float* x, std::int64_t H, std::int64_t W, std::int64_t pt, std::int64_t pl,
                            const float* gy, std::int64_t oh0, std::int64_t oh1, std::int64_t OW, float* sums) {
  using Vec = typename A::Vec;
  Vec total[9];
  for (int t = 0; t < 9; ++t) total[t] = A::set1(0.0f);
  row_blocks_3x3<S>(oh0, oh1, [&](auto rows, std::int64_t oh) {
    constexpr int R = decltype(rows)::value;
    // The block's sums in its own locals, which the compiler keeps in registers: the
    // totals, shared by every block, were stored and reloaded around each FMA (one thread,
    // MobileNet's 56x56x144 at stride 1: 0.170 ms a grad-weight, now 0.100).
    Vec acc[9];
    for (int t = 0; t < 9; ++t) acc[t] = total[t];
    for (std::int64_t o = 0; o < OW; o += A::W) {
      const ColumnLoad<A> gy_columns(o, A::W, OW);  // zeros past OW
      Vec g[R];
      for (int q = 0; q < R; ++q) g[q] = gy_columns(gy + (oh + q) * OW);
      window_block<A, S, R>(x, H, W, S * oh - pt, S * o - pl, [&](int q, int i, const Vec* col) {
        for (int j = 0; j < 3; ++j) acc[3 * i + j] = A::fma(g[q], col[j], acc[3 * i + j]);
      });
    }
    for (int t = 0; t < 9; ++t) total[t] = acc[t];
  });
  for (int t = 0; t < 9; ++t) sums[t] += A::sum(total[t]);
}

// Its grad-input, written straight into gx (no phase planes to spread: that spread stored
// one float at a time, ~28% of the layer's grad-input). gx column 2q + b - pl of a row
// takes tap column 1 at b = 1 and tap columns 0 and 2 at b = 0, from grad_output columns
// q and q - 1: per vector of q, even columns E and odd columns O, interleaved into two
// vectors of consecutive gx columns and stored whole (masked at the image's edges). A gx
// row takes the one or two tap rows i whose grad_output row (ih + pt - i) / 2 exists.
// Vectors of q outer, rows inner: a vector's loads and stores are worked out once for
// all the rows. One = (m == 1): the 9 weights stay in registers over the whole call.
template <class A, bool One>
void dwconv_3x3s2_grad_input_rows(const float* gy, std::int64_t m, std::int64_t OH, std::int64_t OW, const float* w,
                                  std::int64_t pt, std::int64_t pl, std::int64_t ih0, std::int64_t ih1, std::int64_t W,
                                  float* gx) {
  using Vec = typename A::Vec;
  Vec wv[9];
  if constexpr (One)
    for (int t = 0; t < 9; ++t) wv[t] = A::set1(w[t]);
  // Stores the lanes of v holding gx columns c0 + lane inside [0, W) of a row.
  struct ColumnStore {
    std::int64_t c0, lo, n;
    ColumnStore(std::int64_t c0_, std::int64_t W)
        : c0(c0_), lo(c0_ < 0 ? -c0_ : 0), n((W - c0_ < A::W ? W - c0_ : A::W) - (c0_ < 0 ? -c0_ : 0)) {}
    void operator()(float* row, Vec v) const {
      if (n == A::W)
        A::storeu(row + c0, v);
      else if (n > 0)
        A::store_lanes(row + c0 + lo, v, static_cast<int>(lo), static_cast<int>(n));
    }
  };
  for (std::int64_t q = pl / 2, c0 = 2 * (pl / 2) - pl; c0 < W; q += A::W, c0 += 2 * A::W) {
    const ColumnLoad<A> columns(q, A::W, OW), left(q - 1, A::W, OW);
    const ColumnStore first(c0, W), second(c0 + A::W, W);
    for (std::int64_t ih = ih0; ih < ih1; ++ih) {
      Vec even = A::set1(0.0f), odd = A::set1(0.0f);
      for (std::int64_t j = 0; j < m; ++j) {
        if constexpr (!One)
          for (int t = 0; t < 9; ++t) wv[t] = A::set1(w[j * 9 + t]);
#pragma GCC unroll 3
        for (int i = 0; i < 3; ++i) {
          const std::int64_t r = ih + pt - i;
          if (r % 2 != 0 || r < 0 || r / 2 >= OH) continue;
          const float* src = gy + (j * OH + r / 2) * OW;
          const Vec g = columns(src), g1 = left(src);
          even = A::fma(wv[3 * i], g, A::fma(wv[3 * i + 2], g1, even));
          odd = A::fma(wv[3 * i + 1], g, odd);
        }
      }
      first(gx + ih * W, A::interleave_lo(even, odd));
      second(gx + ih * W, A::interleave_hi(even, odd));
    }
  }
}

template <class A>
void dwconv_3x3s2_grad_input(const float* gy, std::int64_t m, std::int64_t OH, std::int64_t OW, const float* w,
                             std::int64_t pt, std::int64_t pl, std::int64_t ih0, std::int64_t ih1, std::int64_t W,
                             float* gx) {
  if (m == 1) return dwconv_3x3s2_grad_input_rows<A, true>(gy, m, OH, OW, w, pt, pl, ih0, ih1, W, gx);
  dwconv_3x3s2_grad_input_rows<A, false>(gy, m, OH, OW, w, pt, pl, ih0, ih1, W, gx);
}

// Streaming stores from the first vector-aligned element of dst on, plain ones before and
// after: written around the caches, without reading each line in first.
template <class A>
void dwconv_stream_copy(float* dst, const float* src, std::int64_t n) {
  std::int64_t i = 0;
  for (; i < n && !A::stream_aligned(dst + i); ++i) dst[i] = src[i];
  for (; i + A::W <= n; i += A::W) A::stream(dst + i, A::loadu(src + i));
  for (; i < n; ++i) dst[i] = src[i];
  A::stream_fence();
}

template <class A>
constexpr DwKernels dwconv_kernels() {
  return DwKernels{A::W,
                   &dwconv<A>,
                   &dwconv_grad_weight<A>,
                   {&dwconv_3x3<A, 1>, &dwconv_3x3<A, 2>},
                   {&dwconv_3x3_grad_weight<A, 1>, &dwconv_3x3_grad_weight<A, 2>},
                   &dwconv_3x3s2_grad_input<A>,
                   &dwconv_stream_copy<A>,
                   &dwconv_nhwc<A>,
                   &dwconv_nhwc_grad_weight<A>};
}

}  // namespace
}  // namespace convkit
