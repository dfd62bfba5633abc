// Winograd F(4x4, 3x3) tile transforms (and grad-weight's F(3x3, 4x4)), written once over a vector-traits struct
// (vec_scalar.h, vec_avx2.h, vec_avx512.h) and instantiated per ISA in
// kernels/cpu/f32_winograd__<isa>.cpp. Vector lanes run over channels: a tile's 36
// input pixels (or 36 transform positions) are each a run of contiguous channels, so
// every load and store is a whole vector and no lane ever mixes two tiles.
//
// Interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray 2015):
//   B^T = [4  0 -5  0 1 0]     A^T = [1 1  1 1  1 0]     G = [ 1/4     0    0 ]
//         [0 -4 -4  1 1 0]           [0 1 -1 2 -2 0]         [-1/6  -1/6 -1/6]
//         [0  4 -4 -1 1 0]           [0 1  1 4  4 0]         [-1/6   1/6 -1/6]
//         [0 -2 -1  2 1 0]           [0 1 -1 8 -8 1]         [ 1/24 1/12  1/6]
//         [0  2 -1 -2 1 0]                                   [ 1/24 -1/12 1/6]
//         [0  4  0 -5 0 1]                                   [ 0      0    1 ]
// Grad-weight runs F(3x3, 4x4) on the same points (a 4x4 tile of grad_output is the
// kernel, the 3x3 weight gradient the output; the same B^T for the input):
//   G' = [ 1/4     0    0     0  ]     A'^T = [1 1  1 1  1 0]
//        [-1/6  -1/6 -1/6  -1/6  ]            [0 1 -1 2 -2 0]
//        [-1/6   1/6 -1/6   1/6  ]            [0 1  1 4  4 1]
//        [ 1/24 1/12  1/6   1/3  ]
//        [ 1/24 -1/12 1/6  -1/3  ]
//        [ 0      0    0     1   ]
// All are written out below with the shared sums factored (the matrices are mostly small
// integers: a generic matrix product would multiply by every 0 and 1). The traits
// offer only fma, so sums are fma(a, 1, b): exact, and one instruction either way.
//
// This header is compiled once per ISA: everything in it has internal linkage.
#pragma once
#include <cstdint>

#include "conv_winograd.h"

namespace convkit {
namespace {

template <class VT>
struct WinogradTransforms {
  using Vec = typename VT::Vec;

  static Vec add(Vec a, Vec b) { return VT::fma(a, VT::set1(1.0f), b); }
  static Vec sub(Vec a, Vec b) { return VT::fma(b, VT::set1(-1.0f), a); }
  static Vec axpy(float s, Vec a, Vec b) { return VT::fma(a, VT::set1(s), b); }  // s*a + b

  // r = B^T d for 6 values d[0], d[s], ..., d[5s].
  static void input_1d(const Vec* d, int s, Vec* r, int rs) {
    const Vec d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    const Vec s34 = add(d3, d4), s12 = add(d1, d2), t43 = sub(d4, d3), t12 = sub(d1, d2);
    const Vec t42 = sub(d4, d2), t31 = sub(d3, d1);
    r[0] = axpy(4.0f, d0, axpy(-5.0f, d2, d4));
    r[rs] = axpy(-4.0f, s12, s34);
    r[2 * rs] = axpy(4.0f, t12, t43);
    r[3 * rs] = axpy(2.0f, t31, t42);
    r[4 * rs] = axpy(-2.0f, t31, t42);
    r[5 * rs] = axpy(4.0f, d1, axpy(-5.0f, d3, d5));
  }

  // r = G g for 3 values g[0], g[s], g[2s].
  static void weight_1d(const Vec* g, int s, Vec* r, int rs) {
    const Vec g0 = g[0], g1 = g[s], g2 = g[2 * s], s02 = add(g0, g2);
    const Vec t = VT::fma(g0, VT::set1(1.0f / 24), VT::fma(g2, VT::set1(1.0f / 6), VT::zero()));
    r[0] = VT::fma(g0, VT::set1(0.25f), VT::zero());
    r[rs] = VT::fma(add(s02, g1), VT::set1(-1.0f / 6), VT::zero());
    r[2 * rs] = VT::fma(sub(s02, g1), VT::set1(-1.0f / 6), VT::zero());
    r[3 * rs] = axpy(1.0f / 12, g1, t);
    r[4 * rs] = axpy(-1.0f / 12, g1, t);
    r[5 * rs] = g2;
  }

  // r = G' g for 4 values g[0], g[s], g[2s], g[3s] (grad-weight's grad_output tile).
  static void grad_output_1d(const Vec* g, int s, Vec* r, int rs) {
    const Vec g0 = g[0], g1 = g[s], g2 = g[2 * s], g3 = g[3 * s], e = add(g0, g2), o = add(g1, g3);
    const Vec e2 = VT::fma(g0, VT::set1(1.0f / 24), VT::fma(g2, VT::set1(1.0f / 6), VT::zero()));
    const Vec o2 = VT::fma(g1, VT::set1(1.0f / 12), VT::fma(g3, VT::set1(1.0f / 3), VT::zero()));
    r[0] = VT::fma(g0, VT::set1(0.25f), VT::zero());
    r[rs] = VT::fma(add(e, o), VT::set1(-1.0f / 6), VT::zero());
    r[2 * rs] = VT::fma(sub(e, o), VT::set1(-1.0f / 6), VT::zero());
    r[3 * rs] = add(e2, o2);
    r[4 * rs] = sub(e2, o2);
    r[5 * rs] = g3;
  }

  // r = A'^T m for 6 values m[0], m[s], ..., m[5s] (grad-weight's 3 taps).
  static void weight_grad_1d(const Vec* m, int s, Vec* r, int rs) {
    const Vec m0 = m[0], m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s], m5 = m[5 * s];
    const Vec p12 = add(m1, m2), p34 = add(m3, m4);
    r[0] = add(add(m0, p12), p34);
    r[rs] = axpy(2.0f, sub(m3, m4), sub(m1, m2));
    r[2 * rs] = add(axpy(4.0f, p34, p12), m5);
  }

  // r = A^T m for 6 values m[0], m[s], ..., m[5s].
  static void output_1d(const Vec* m, int s, Vec* r, int rs) {
    const Vec m0 = m[0], m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s], m5 = m[5 * s];
    const Vec p12 = add(m1, m2), d12 = sub(m1, m2), p34 = add(m3, m4), d34 = sub(m3, m4);
    r[0] = add(add(m0, p12), p34);
    r[rs] = axpy(2.0f, d34, d12);
    r[2 * rs] = axpy(4.0f, p34, p12);
    r[3 * rs] = add(axpy(8.0f, d34, d12), m5);
  }
};

// See WinogradInputFn in conv_winograd.h.
template <class VT>
void winograd_input_tile(const float* const* src, std::int64_t nc, float* dst, std::int64_t dst_ld) {
  using WT = WinogradTransforms<VT>;
  using Vec = typename VT::Vec;
  for (std::int64_t c = 0; c < nc; c += VT::W) {
    Vec d[36], t[36];
    for (int p = 0; p < 36; ++p) d[p] = VT::loadu(src[p] + c);
    for (int j = 0; j < 6; ++j) WT::input_1d(d + j, 6, t + j, 6);       // columns: t = B^T d
    for (int a = 0; a < 6; ++a) WT::input_1d(t + 6 * a, 1, d + 6 * a, 1);  // rows: d = t B
    for (int p = 0; p < 36; ++p) VT::storeu(dst + p * dst_ld + c, d[p]);
  }
}

// See WinogradWeightFn in conv_winograd.h.
template <class VT>
void winograd_weight_rows(const float* src, std::int64_t tap_stride, std::int64_t n, float* dst, std::int64_t dst_ld) {
  using WT = WinogradTransforms<VT>;
  using Vec = typename VT::Vec;
  for (std::int64_t o = 0; o < n; o += VT::W) {
    Vec g[9], t[18], u[36];
    for (int p = 0; p < 9; ++p) g[p] = VT::loadu(src + p * tap_stride + o);
    for (int j = 0; j < 3; ++j) WT::weight_1d(g + j, 3, t + j, 3);       // columns: t = G g (6 x 3)
    for (int a = 0; a < 6; ++a) WT::weight_1d(t + 3 * a, 1, u + 6 * a, 1);  // rows: u = t G^T
    for (int p = 0; p < 36; ++p) VT::storeu(dst + p * dst_ld + o, u[p]);
  }
}

// See WinogradOutputFn in conv_winograd.h.
template <class VT>
void winograd_output_tile(const float* src, std::int64_t src_ld, std::int64_t nk, const float* bias, bool relu,
                          float* const* dst, std::int64_t k_stride) {
  using WT = WinogradTransforms<VT>;
  using Vec = typename VT::Vec;
  constexpr int W = VT::W;
  for (std::int64_t k = 0; k < nk; k += W) {
    Vec m[36], t[24], o[16];
    for (int p = 0; p < 36; ++p) m[p] = VT::loadu(src + p * src_ld + k);
    for (int j = 0; j < 6; ++j) WT::output_1d(m + j, 6, t + j, 6);      // columns: t = A^T m (4 x 6)
    for (int a = 0; a < 4; ++a) WT::output_1d(t + 6 * a, 1, o + 4 * a, 1);  // rows: o = t A (4 x 4)
    const Vec b = bias ? VT::loadu(bias + k) : VT::zero();
    const int n = static_cast<int>(nk - k < W ? nk - k : W);
    for (int p = 0; p < 16; ++p) {
      if (!dst[p]) continue;
      const Vec v = relu ? VT::relu(WT::add(o[p], b)) : WT::add(o[p], b);
      if (k_stride == 1) {
        if (n == W)
          VT::storeu(dst[p] + k, v);
        else
          VT::store_lanes(dst[p] + k, v, 0, n);
      } else {  // NCHW: one channel plane per lane
        alignas(64) float lanes[W];
        VT::storeu(lanes, v);
        for (int l = 0; l < n; ++l) dst[p][(k + l) * k_stride] = lanes[l];
      }
    }
  }
}

// See WinogradGradOutputFn in conv_winograd.h.
template <class VT>
void winograd_grad_output_tile(const float* const* src, std::int64_t nk, float* dst, std::int64_t dst_ld) {
  using WT = WinogradTransforms<VT>;
  using Vec = typename VT::Vec;
  for (std::int64_t k = 0; k < nk; k += VT::W) {
    Vec g[16], t[24], u[36];
    for (int p = 0; p < 16; ++p) g[p] = VT::loadu(src[p] + k);
    for (int j = 0; j < 4; ++j) WT::grad_output_1d(g + j, 4, t + j, 4);     // columns: t = G' g (6 x 4)
    for (int a = 0; a < 6; ++a) WT::grad_output_1d(t + 4 * a, 1, u + 6 * a, 1);  // rows: u = t G'^T
    for (int p = 0; p < 36; ++p) VT::storeu(dst + p * dst_ld + k, u[p]);
  }
}

// See WinogradWeightGradFn in conv_winograd.h.
template <class VT>
void winograd_weight_grad_rows(const float* src, std::int64_t src_ld, std::int64_t n, float* dst,
                               std::int64_t dst_ld) {
  using WT = WinogradTransforms<VT>;
  using Vec = typename VT::Vec;
  for (std::int64_t o = 0; o < n; o += VT::W) {
    Vec m[36], t[18], g[9];
    for (int p = 0; p < 36; ++p) m[p] = VT::loadu(src + p * src_ld + o);
    for (int j = 0; j < 6; ++j) WT::weight_grad_1d(m + j, 6, t + j, 6);     // columns: t = A'^T m (3 x 6)
    for (int a = 0; a < 3; ++a) WT::weight_grad_1d(t + 6 * a, 1, g + 3 * a, 1);  // rows: g = t A' (3 x 3)
    for (int p = 0; p < 9; ++p) VT::storeu(dst + p * dst_ld + o, g[p]);
  }
}

template <class VT>
WinogradKernels winograd_kernels(const char* name) {
  return {&winograd_weight_rows<VT>,      &winograd_input_tile<VT>,       &winograd_output_tile<VT>,
          &winograd_grad_output_tile<VT>, &winograd_weight_grad_rows<VT>, VT::W,
          name};
}

}  // namespace
}  // namespace convkit
