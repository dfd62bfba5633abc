// The direct-convolution microkernels, written once over a vector-traits struct
// (vec_scalar.h, vec_avx2.h, vec_avx512.h) and instantiated per ISA and tile shape in
// kernels/cpu/*conv__<isa>.cpp. This header is compiled once per ISA: everything in it
// is a template or has internal linkage.
//
// Register tile of the direct kernel R x (V vectors): R*V accumulators. Per reduction
// entry it loads V input vectors (unaligned, at the entry's offset) and broadcasts R
// weights (one from each output channel's row, through R pointers kept in general
// registers), then does R*V FMAs: V + R loads per R*V FMAs. The tile shapes keep
// R*V + V + 1 within the vector registers and R + 4 within the general ones (no spills).
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>

#include "conv_tile.h"

namespace convkit {
namespace {

// Stores the R x (V*W) tile acc through the output map (see OutMap): channels r < kr,
// flat pixels p0 + i, i >= skip, that fall inside the map's rows and cols.
template <class VT, int R, int V>
inline void store_tile(const OutMap<typename VT::Elem>& m, std::int64_t p0, int skip, int kr,
                       const typename VT::Vec (&acc)[R][V]) {
  using T = typename VT::Elem;
  constexpr int W = VT::W;
  std::int64_t row = p0 / m.Wq, col = p0 - row * m.Wq;
  if (m.col_stride == 1) {
    // Each vector's lanes split into runs that stay within one flat row; a run's valid
    // part (col < cols, lane index >= skip) is contiguous in the output. Most vectors
    // are one full run.
    for (int v = 0; v < V; ++v) {
      for (int lane = 0; lane < W;) {
        if (row >= m.rows) return;
        const int len = static_cast<int>(std::min<std::int64_t>(W - lane, m.Wq - col));
        const int from = std::max(lane, skip - v * W);  // first lane of the run to store
        if (col + (from - lane) < m.cols && from < lane + len) {
          const int cnt = static_cast<int>(std::min<std::int64_t>(lane + len - from, m.cols - col - (from - lane)));
          T* dst = m.base + row * m.row_stride + col + (from - lane);
          for (int r = 0; r < R; ++r) {
            if (r >= kr) break;
            if (cnt == W)
              VT::storeu(dst + r * m.k_stride, acc[r][v]);
            else
              VT::store_lanes(dst + r * m.k_stride, acc[r][v], from, cnt);
          }
        }
        lane += len;
        col += len;
        if (col == m.Wq) col = 0, ++row;
      }
    }
    return;
  }
  // Strided columns (NHWC, grad-input phases with a column stride): through a buffer.
  alignas(64) T buf[R][V * W];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) VT::storeu(&buf[r][v * W], acc[r][v]);
  for (int i = 0; i < V * W; ++i) {
    if (row >= m.rows) return;
    if (col < m.cols && i >= skip) {
      T* dst = m.base + row * m.row_stride + col * m.col_stride;
      for (int r = 0; r < kr; ++r) dst[r * m.k_stride] = buf[r][i];
    }
    if (++col == m.Wq) col = 0, ++row;
  }
}

template <class VT, int R, int V>
void conv_direct_tile(const DirectTile<typename VT::Elem>& t) {
  using T = typename VT::Elem;
  using Vec = typename VT::Vec;
  constexpr int W = VT::W;
  Vec acc[R][V];
  const T* w[R];
  for (int r = 0; r < R; ++r) {
    w[r] = t.w + (r < t.kr ? r : t.kr - 1) * t.w_ld;
    const Vec b = t.bias && r < t.kr ? VT::set1(t.bias[r]) : VT::zero();
    for (int v = 0; v < V; ++v) acc[r][v] = b;
  }
  for (std::int64_t e = 0; e < t.n; ++e) {
    const T* in = t.in + t.ent[e].x;
    const std::int64_t wo = t.ent[e].w;
    // Weights 32 entries ahead, one row per entry in turn (DirectJob::prefetch_w; the
    // compiler unswitches the loop on the flag).
    if (t.prefetch_w) __builtin_prefetch(w[e % R] + t.ent[std::min(e + 32, t.n - 1)].w);
    Vec x[V];
    for (int v = 0; v < V; ++v) x[v] = VT::loadu(in + v * W);
    for (int r = 0; r < R; ++r) {
      const Vec b = VT::set1(w[r][wo]);
      for (int v = 0; v < V; ++v) acc[r][v] = VT::fma(x[v], b, acc[r][v]);
    }
  }
  // A copy for the store: an accumulator array whose address escapes is kept in memory
  // inside the reduction loop by GCC (24 spills per entry).
  Vec out[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) out[r][v] = t.relu ? VT::relu(acc[r][v]) : acc[r][v];
  store_tile<VT, R, V>(t.out, t.p0, t.skip, t.kr, out);
}

// The table entry of the R x (V vectors) direct kernel: the full tile and its narrower
// tiles of 1 .. V-1 vectors (DirectKernel::tile).
template <class VT, int R, int... v>
DirectKernel<typename VT::Elem> direct_kernel_of(std::integer_sequence<int, v...>, float eff, float eff_w_in_place,
                                                 const char* name) {
  return {{&conv_direct_tile<VT, R, v + 1>...}, R, static_cast<int>(sizeof...(v)) * VT::W, eff, eff_w_in_place, name};
}
template <class VT, int R, int V>
DirectKernel<typename VT::Elem> direct_kernel(float eff, float eff_w_in_place, const char* name) {
  return direct_kernel_of<VT, R>(std::make_integer_sequence<int, V>{}, eff, eff_w_in_place, name);
}

// Grad-weight as outer products: per pixel, V vectors of grad_output (KB = V*W output
// channels, contiguous after packing) times R broadcast input values (the R entries'
// taps at that pixel). R + V loads per R*V FMAs, accumulators over channels, so no
// horizontal sums, and the pixel loop walks only real output pixels.
template <class VT, int R, int V>
void conv_gw_tile(const GwTile<typename VT::Elem>& t) {
  using T = typename VT::Elem;
  using Vec = typename VT::Vec;
  constexpr int W = VT::W, KB = V * W;
  Vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = VT::loadu(t.acc + t.at[r] * KB + v * W);
  for (std::int64_t row = 0; row < t.rows; ++row) {
    const T* gy = t.gy + row * t.gy_ld;
    const T* x = t.x + row * t.x_ld;
    const T* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = x + t.off[r];
    for (std::int64_t col = 0; col < t.cols; ++col, gy += KB) {
      Vec g[V];
      for (int v = 0; v < V; ++v) g[v] = VT::loadu(gy + v * W);
      for (int r = 0; r < R; ++r) {
        const Vec b = VT::set1(xr[r][col]);
        for (int v = 0; v < V; ++v) acc[r][v] = VT::fma(g[v], b, acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) VT::storeu(t.acc + t.at[r] * KB + v * W, acc[r][v]);
}

// dst[c*dst_ld + r] = src[r*src_ld + c] for a rows x cols matrix: W x W blocks through
// registers (VT::transpose_block), the edges element by element. Grad-weight packs
// grad_output and unpacks its sums with it (a transpose each, in NCHW).
template <class VT>
void transpose(const typename VT::Elem* src, std::int64_t src_ld, typename VT::Elem* dst, std::int64_t dst_ld,
               std::int64_t rows, std::int64_t cols) {
  constexpr int W = VT::W;
  std::int64_t r = 0;
  for (; r + W <= rows; r += W) {
    std::int64_t c = 0;
    for (; c + W <= cols; c += W) VT::transpose_block(src + r * src_ld + c, src_ld, dst + c * dst_ld + r, dst_ld);
    for (; c < cols; ++c)
      for (int i = 0; i < W; ++i) dst[c * dst_ld + r + i] = src[(r + i) * src_ld + c];
  }
  for (; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) dst[c * dst_ld + r] = src[r * src_ld + c];
}

}  // namespace
}  // namespace convkit
