// What the direct engine's operators (conv_direct_*.cpp) share: how an activation is
// laid out as planes for the kernels (conv_planes.h), packing every channel of it, and
// the cost model that chooses between layouts.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "conv_geometry.h"
#include "conv_jobs.h"
#include "conv_layout.h"
#include "conv_planes.h"
#include "conv_reference_loops.h"
#include "thread_pool.h"

namespace convkit {

// Runs fn(i0, i1) over [0, n) in chunks of about `grain` items, evenly sized, their
// count a multiple of the thread count once there is more than a quarter grain of work:
// in grain-sized chunks, Inception's 128 input channels packed as 29 + 29 + 29 + 29 + 12
// (three chunks on one core, two on the other), and a 14 x 14 grad-weight's gy
// transpose (4 items, grain 5) on one core while the other waited.
template <typename Fn>
void parallel_ranges(std::int64_t n, std::int64_t grain, Fn fn) {
  if (n <= 0) return;
  const std::int64_t threads = get_num_threads(), g = std::max<std::int64_t>(1, grain);
  std::int64_t chunks = ceil_div(n, g);
  if (4 * n >= g) chunks = std::min(n, round_up(chunks, threads));
  const std::int64_t per = ceil_div(n, chunks);
  parallel_for(ceil_div(n, per), [&](std::int64_t t) { fn(t * per, std::min(n, (t + 1) * per)); });
}

// Packs every channel c of every image n of an N x C x H x W activation stored in
// `layout` with pack(channel, row_stride, col_stride, dst) into planes + (n*C + c) * cs.
template <typename T, typename PackChannel>
const T* pack_all(const T* src, Layout layout, std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                  std::int64_t cs, PackChannel pack, T* planes) {
  if (cs == 0) return planes;  // folded, and no tap column ever reads real input: nothing to read
  const ActStrides s = act_strides(layout, C, H, W);
  parallel_ranges(N * C, (1 << 16) / cs, [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) pack(src + (i / C) * s.n + (i % C) * s.c, s.h, s.w, planes + i * cs);
  });
  return planes;
}

// The forward's input layout, one of two schemes (conv_planes.h):
//   stride-phase planes: Wq = ceil(padded width / sw) columns per row, of which
//     Wq - OW are computed and discarded;
//   folded tap columns: one window per tap column j (columns j*dw - pl, step sw),
//     exactly as wide as the output: nothing discarded, but kw windows to pack per row.
// Folding pays on narrow images, wide kernels and large dilation (Inception's 1x7 on
// 17 columns: 23 -> 17; DeepLab's ASPP: 57 -> 33), and never on a 3x3 layer of
// 56 columns or more (2 discarded columns cost less than packing 3 windows).
// Folded windows also split the output columns into bands where the same tap columns
// read real input (ASPP, dilation 12 on 33 columns: taps j = 0 and 2 read only padding
// on 12 columns each): a band packs windows of its own width for its valid taps only.
struct ColumnBand {
  std::int64_t c0, cols;              // output columns [c0, c0 + cols)
  PlaneGeom pg;                       // one plane set, Wq >= cols wide
  std::vector<std::int64_t> window;   // folded: per tap column j, its windows' offset in a channel, -1: none
};

struct InputPlanes {
  std::vector<ColumnBand> bands;
  std::int64_t cs;                    // elements per input channel, every band
  std::int64_t dw, pl, sw;

  bool folded() const { return !bands.front().window.empty(); }
  // Offset within a channel's planes of tap (ih = i*dh, j), as band b reads it.
  std::int64_t offset_of(const ColumnBand& b, std::int64_t ih, std::int64_t j) const {
    return b.window.empty() ? b.pg.offset_of(ih, j * dw) : b.window[j] + b.pg.offset_of(ih, 0);
  }
  template <typename T>
  void pack(const T* src, std::int64_t rs, std::int64_t cs_, std::int64_t H, std::int64_t W, T* dst) const {
    if (!folded()) return pack_planes(src, rs, cs_, H, W, bands.front().pg, dst);
    for (const ColumnBand& b : bands)
      for (std::size_t j = 0; j < b.window.size(); ++j) {
        if (b.window[j] < 0) continue;
        for (std::int64_t a = 0; a < b.pg.sh; ++a) {
          T* plane = dst + b.window[j] + a * b.pg.size;
          pack_window(src, rs, cs_, H, W, a - b.pg.pt, b.pg.sh, b.pg.Hq,
                      b.c0 * sw + static_cast<std::int64_t>(j) * dw - pl, sw, b.pg.Wq, plane);
          std::fill(plane + b.pg.Hq * b.pg.Wq, plane + b.pg.size, T(0));
        }
      }
  }
};

inline InputPlanes stride_phase_planes(const ConvGeom& g, std::int64_t overrun) {
  const PlaneGeom pg = make_plane_geom(g.H + g.pt + g.pb, g.W + g.pl + g.pr, g.pt, g.pl, g.sh, g.sw, overrun);
  return {{{0, g.OW, pg, {}}}, pg.channel_size(), g.dw, g.pl, g.sw};
}

// The activation itself as its (only) plane: stride 1, no padding, NCHW.
inline InputPlanes in_place_planes(const ConvGeom& g) {
  return {{{0, g.OW, PlaneGeom{1, 1, 0, 0, g.H, g.W, g.H * g.W}, {}}}, g.H * g.W, g.dw, 0, 1};
}

// Folded windows in column bands: one band over all output columns, or (split) a band
// between each pair of consecutive points where a tap column starts or stops reading
// real input, whichever costs fewer P-pixel tile passes.
inline InputPlanes folded_planes(const ConvGeom& g, std::int64_t overrun, std::int64_t P) {
  std::vector<std::int64_t> lo(static_cast<std::size_t>(g.kw)), hi(lo.size()), cuts{0, g.OW};
  for (std::int64_t j = 0; j < g.kw; ++j) {
    tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, lo[j], hi[j]);
    if (lo[j] < hi[j]) cuts.push_back(lo[j]), cuts.push_back(hi[j]);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  auto layout = [&](const std::vector<std::int64_t>& at) {
    InputPlanes ip{{}, 0, g.dw, g.pl, g.sw};
    for (std::size_t b = 0; b + 1 < at.size(); ++b) {
      ColumnBand band{at[b], at[b + 1] - at[b],
                      make_plane_geom(g.H + g.pt + g.pb, at[b + 1] - at[b], g.pt, 0, g.sh, 1, overrun),
                      std::vector<std::int64_t>(static_cast<std::size_t>(g.kw), -1)};
      for (std::int64_t j = 0; j < g.kw; ++j)  // valid anywhere in one band, or all over a split band
        if (at.size() == 2 ? lo[j] < hi[j] : lo[j] <= band.c0 && hi[j] >= band.c0 + band.cols)
          band.window[j] = ip.cs, ip.cs += band.pg.channel_size();
      ip.bands.push_back(std::move(band));
    }
    return ip;
  };
  auto passes = [&](const InputPlanes& ip) {
    double n = 0;
    for (const ColumnBand& b : ip.bands)
      n += double((g.OH * b.cols + P - 1) / P) *
           double(std::count_if(b.window.begin(), b.window.end(), [](std::int64_t o) { return o >= 0; }));
    return n;
  };
  InputPlanes whole = layout({0, g.OW});
  if (cuts.size() == 2) return whole;
  InputPlanes split = layout(cuts);
  return passes(split) < kSplitGain * passes(whole) ? split : whole;
}

// Kernel time of a pass over a flat domain plus its packing, in MACs: a packed element
// costs about 35 MACs (narrow folded windows pack at 0.26 ns per element, the kernel
// does 32 MACs a cycle at 4 GHz). With it the choice matches measurements: folded wins
// on DeepLab's dilated layers (+7% at dilation 2, +50% with ASPP's bands), loses on
// LeNet, AlexNet conv1 and stride-2 3x3 layers (-10 to -24%), ties on Inception's 1x7.
// Weights read in place (w_in_place) run at the kernel's eff_w_in_place.
template <typename T>
double pass_cost(const DirectKernel<T>& k, std::int64_t nk, std::int64_t npix, std::int64_t entries, double packed,
                 bool w_in_place = false) {
  return double(round_up(nk, k.R)) * double(k.padded(npix)) * double(entries) /
             (w_in_place ? k.eff_w_in_place : k.eff) +
         35.0 * packed;
}

// The direct engine's operators, without the depthwise routing of conv_direct.cpp.
template <typename T>
void direct_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y);
template <typename T>
void direct_grad_input(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx);
template <typename T>
void direct_grad_weight(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw);

}  // namespace convkit
