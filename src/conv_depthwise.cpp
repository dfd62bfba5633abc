// Depthwise operators: plan the planes, the tap offsets and the store maps once per call,
// then run one unit of work per (image, channel, block of rows) on the thread pool.
//
// Each unit packs its input into zero-padded flat planes (conv_planes.h) in a per-thread
// workspace right before using them, so the copy is read back from L1/L2 and memory
// traffic stays that of the arrays themselves: depthwise convolution does ~2 FLOPs per
// byte, and is bound by memory, not by arithmetic.
//
// float32 runs the SIMD kernels (kernels/cpu/f32_dwconv*); float64 the plain loops. NHWC
// float32 is conv_depthwise_nhwc.cpp.
#include "conv_depthwise.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "conv_depthwise_units.h"
#include "conv_planes.h"
#include "conv_reference_loops.h"
#include "cpu_features.h"
#include "f32_dwconv.h"
#include "thread_pool.h"

namespace convkit {
namespace {

using namespace depthwise;

// A unit's packed planes stay in L2 between packing and computing.
constexpr std::int64_t kPlaneBlockBytes = 128 << 10;

// Store maps (f32_dwconv.h) of compact rows x cols outputs computed as flat pixels
// p = row * row_width + col, keyed by (rows, cols). Filled before the parallel part,
// only read inside it.
class StoreMaps {
 public:
  StoreMaps(std::int64_t row_width, int lanes) : row_width_(row_width), lanes_(lanes) {}

  void add(std::int64_t rows, std::int64_t cols) {
    if (rows <= 0 || cols <= 0 || find(rows, cols)) return;
    maps_.push_back({rows, cols, {}});
    std::vector<DwStore>& map = maps_.back().map;
    const std::int64_t end = (rows - 1) * row_width_ + cols;  // one past the last output's flat pixel
    map.resize(static_cast<std::size_t>(ceil_div(end, lanes_)));
    for (std::size_t v = 0; v < map.size(); ++v) {
      const std::int64_t p0 = static_cast<std::int64_t>(v) * lanes_;
      DwStore s{0, 0, p0 / row_width_ * cols + std::min(p0 % row_width_, cols)};
      for (int l = 0; l < lanes_; ++l) {
        if (p0 + l < end && (p0 + l) % row_width_ < cols) {
          s.keep |= 1u << l;
          ++s.count;
        }
      }
      map[v] = s;
    }
  }
  const std::vector<DwStore>& get(std::int64_t rows, std::int64_t cols) const { return find(rows, cols)->map; }

 private:
  struct Entry {
    std::int64_t rows, cols;
    std::vector<DwStore> map;
  };
  const Entry* find(std::int64_t rows, std::int64_t cols) const {  // a handful of entries: a linear search
    for (const Entry& e : maps_)
      if (e.rows == rows && e.cols == cols) return &e;
    return nullptr;
  }
  std::int64_t row_width_;
  int lanes_;
  std::vector<Entry> maps_;
};

// Forward and grad-weight read the input the same way: output rows in blocks, each
// block's rows of one input channel packed as stride-phase planes, tap t at off[t].
struct InputPlan {
  Blocks blocks;
  PlaneGeom pg;  // block 0's planes; block b's start b * blocks.rows * sh padded rows lower
  std::vector<std::int64_t> off;

  PlaneGeom block_geom(std::int64_t b, std::int64_t sh) const {
    PlaneGeom p = pg;
    p.pt -= b * blocks.rows * sh;
    return p;
  }
  // Vectors covering `rows` output rows of `cols` columns as flat pixels.
  std::int64_t vectors(std::int64_t rows, std::int64_t cols, int lanes) const {
    return ceil_div((rows - 1) * pg.Wq + cols, lanes);
  }
};

InputPlan plan_input(const ConvGeom& g, int lanes) {
  const std::int64_t Wp = g.W + g.pl + g.pr, eh = g.dh * (g.kh - 1) + 1;
  const Blocks blocks =
      row_blocks(g.OH, g.N * g.C, g.sh * Wp * static_cast<std::int64_t>(sizeof(float)), kPlaneBlockBytes);
  InputPlan plan{blocks, make_plane_geom((blocks.rows - 1) * g.sh + eh, Wp, g.pt, g.pl, g.sh, g.sw, lanes), {}};
  for (std::int64_t i = 0; i < g.kh; ++i)
    for (std::int64_t j = 0; j < g.kw; ++j) plan.off.push_back(plan.pg.offset_of(i * g.dh, j * g.dw));
  return plan;
}

// 3x3, dilation 1, stride 1 or 2 (MobileNet's depthwise layers): the forward reads x in
// place (f32_dwconv.h), and so do grad-input (grad_output, writing gx in place; at
// stride 1 for multiplier 1) and grad-weight (x and grad_output). Units of (image,
// channel, block of rows) as the planes' path.
bool in_place_3x3(const ConvGeom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == g.sw && (g.sh == 1 || g.sh == 2) && g.dh == 1 && g.dw == 1;
}

void forward_3x3_f32(const ConvGeom& g, const DwKernels& kern, const float* x, const float* w, const float* bias,
                       bool relu, float* y) {
  const std::int64_t m = g.K / g.C;
  const Blocks bl =
      row_blocks(g.OH, g.N * g.C, g.sh * g.W * static_cast<std::int64_t>(sizeof(float)), kPlaneBlockBytes);
  const bool stream = stream_output(g.N * g.K * g.OH * g.OW);
  parallel_units(g.N * g.C * bl.count, m * bl.rows * g.OW * 9, [&](std::int64_t unit) {
    const std::int64_t nc = unit / bl.count, b = unit % bl.count, n = nc / g.C, c = nc % g.C;
    const std::int64_t r0 = b * bl.rows, r1 = r0 + bl.rows_of(b, g.OH);
    for (std::int64_t k = c * m; k < (c + 1) * m; ++k)
      write_unit(kern, stream, y + ((n * g.K + k) * g.OH + r0) * g.OW, (r1 - r0) * g.OW, [&](float* rows) {
        // Output rows [r0, r1) as rows [0, r1 - r0) of `rows`, whose input window starts
        // sh * r0 rows lower.
        kern.conv_3x3[g.sh - 1](x + nc * g.H * g.W, g.H, g.W, g.pt - g.sh * r0, g.pl, w + k * 9,
                                bias ? bias[k] : 0.0f, relu, 0, r1 - r0, g.OW, rows);
      });
  });
}

void forward_f32(const ConvGeom& g, const float* x, const float* w, const float* bias, bool relu, float* y) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  if (in_place_3x3(g)) return forward_3x3_f32(g, kern, x, w, bias, relu, y);
  const std::int64_t m = g.K / g.C, taps = g.kh * g.kw;
  const InputPlan plan = plan_input(g, kern.lanes);
  const Blocks& bl = plan.blocks;
  StoreMaps maps(plan.pg.Wq, kern.lanes);
  maps.add(bl.rows, g.OW);
  maps.add(bl.rows_of(bl.count - 1, g.OH), g.OW);
  parallel_units(g.N * g.C * bl.count, m * bl.rows * g.OW * taps, [&](std::int64_t unit) {
    const std::int64_t nc = unit / bl.count, b = unit % bl.count, n = nc / g.C, c = nc % g.C;
    const std::int64_t r0 = b * bl.rows, rows = bl.rows_of(b, g.OH);
    float* planes = scratch(plan.pg.channel_size());
    pack_planes(x + nc * g.H * g.W, g.W, 1, g.H, g.W, plan.block_geom(b, g.sh), planes);
    const std::vector<DwStore>& map = maps.get(rows, g.OW);
    for (std::int64_t k = c * m; k < (c + 1) * m; ++k)
      kern.conv(planes, plan.off.data(), w + k * taps, taps, static_cast<std::int64_t>(map.size()), map.data(),
                bias ? bias[k] : 0.0f, relu, y + ((n * g.K + k) * g.OH + r0) * g.OW);
  });
}

// Grad-weight: gw[k, t] = sum over n and p of gy[n, k, p] * plane[n, c][p + off[t]], with
// gy's rows laid out at the planes' row width and zeros in the padding columns. One unit
// per (channel, block of rows) sums the batch in a fixed order; blocks are then added in
// a fixed order: deterministic, no atomics.
// 3x3, dilation 1, stride 1 or 2: x and grad_output read in place, units of (image,
// channel, block of rows) in memory order (one unit per channel summing the batch jumps a
// whole image between its planes: measured 2x slower at stride 2), their sums then added
// in a fixed order.
void grad_weight_3x3_f32(const ConvGeom& g, const DwKernels& kern, const float* gy, const float* x, float* gw) {
  const std::int64_t m = g.K / g.C;
  const Blocks bl =
      row_blocks(g.OH, g.N * g.C, g.sh * g.W * static_cast<std::int64_t>(sizeof(float)), kPlaneBlockBytes);
  const std::int64_t units = g.N * g.C * bl.count;
  std::vector<float> partial(static_cast<std::size_t>(units * m * 9));
  parallel_units(units, m * bl.rows * g.OW * 9, [&](std::int64_t unit) {
    const std::int64_t nc = unit / bl.count, b = unit % bl.count, n = nc / g.C, c = nc % g.C;
    const std::int64_t r0 = b * bl.rows, r1 = r0 + bl.rows_of(b, g.OH);
    for (std::int64_t j = 0; j < m; ++j)
      kern.grad_weight_3x3[g.sh - 1](x + nc * g.H * g.W, g.H, g.W, g.pt, g.pl,
                                     gy + (n * g.K + c * m + j) * g.OH * g.OW, r0, r1, g.OW,
                                     partial.data() + (unit * m + j) * 9);
  });
  for (std::int64_t k = 0; k < g.K; ++k) {
    const std::int64_t c = k / m, j = k % m;
    for (std::int64_t t = 0; t < 9; ++t) {
      float s = 0.0f;
      for (std::int64_t n = 0; n < g.N; ++n)
        for (std::int64_t b = 0; b < bl.count; ++b)
          s += partial[static_cast<std::size_t>((((n * g.C + c) * bl.count + b) * m + j) * 9 + t)];
      gw[k * 9 + t] = s;
    }
  }
}

void grad_weight_f32(const ConvGeom& g, const float* gy, const float* x, float* gw) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  if (in_place_3x3(g)) return grad_weight_3x3_f32(g, kern, gy, x, gw);
  const std::int64_t m = g.K / g.C, taps = g.kh * g.kw;
  const InputPlan plan = plan_input(g, kern.lanes);
  const Blocks& bl = plan.blocks;
  std::vector<float> partial(static_cast<std::size_t>(g.C * bl.count * m * taps));
  parallel_units(g.C * bl.count, g.N * m * bl.rows * g.OW * taps, [&](std::int64_t unit) {
    const std::int64_t c = unit / bl.count, b = unit % bl.count;
    const std::int64_t r0 = b * bl.rows, rows = bl.rows_of(b, g.OH), width = plan.pg.Wq;
    const std::int64_t nvec = plan.vectors(rows, g.OW, kern.lanes);
    float* planes = scratch(plan.pg.channel_size() + nvec * kern.lanes);
    float* gy_rows = planes + plan.pg.channel_size();
    for (std::int64_t r = 0; r + 1 < rows; ++r)  // the padding columns, never overwritten below
      std::fill(gy_rows + r * width + g.OW, gy_rows + (r + 1) * width, 0.0f);
    std::fill(gy_rows + (rows - 1) * width + g.OW, gy_rows + nvec * kern.lanes, 0.0f);
    float* sums = partial.data() + unit * m * taps;
    const PlaneGeom pg = plan.block_geom(b, g.sh);
    for (std::int64_t n = 0; n < g.N; ++n) {
      pack_planes(x + (n * g.C + c) * g.H * g.W, g.W, 1, g.H, g.W, pg, planes);
      for (std::int64_t j = 0; j < m; ++j) {
        const float* src = gy + ((n * g.K + c * m + j) * g.OH + r0) * g.OW;
        for (std::int64_t r = 0; r < rows; ++r)
          std::memcpy(gy_rows + r * width, src + r * g.OW, sizeof(float) * static_cast<std::size_t>(g.OW));
        kern.grad_weight(planes, plan.off.data(), taps, gy_rows, nvec, sums + j * taps);
      }
    }
  });
  for (std::int64_t k = 0; k < g.K; ++k) {
    const std::int64_t c = k / m, j = k % m;
    for (std::int64_t t = 0; t < taps; ++t) {
      float s = 0.0f;
      for (std::int64_t b = 0; b < bl.count; ++b)
        s += partial[static_cast<std::size_t>(((c * bl.count + b) * m + j) * taps + t)];
      gw[k * taps + t] = s;
    }
  }
}

// out[r*out_stride + i*step] = in[r*in_stride + i]: a phase's rows spread into gx. Stride
// 2 is a compile-time step so the compiler vectorises it (an AVX-512 version with
// half-masked stores measured 1.1x slower).
void spread_strided(const float* in, std::int64_t in_stride, std::int64_t step, std::int64_t n, std::int64_t rows,
                    float* out, std::int64_t out_stride) {
  for (std::int64_t r = 0; r < rows; ++r, in += in_stride, out += out_stride) {
    if (step == 2) {
      for (std::int64_t i = 0; i < n; ++i) out[2 * i] = in[i];
    } else {
      for (std::int64_t i = 0; i < n; ++i) out[i * step] = in[i];
    }
  }
}

// 3x3, dilation 1: gx written in place from grad_output read in place, units of (image,
// channel, block of gx rows). Stride 2 has its own kernel (any multiplier); stride 1 with
// multiplier 1 is the forward's kernel on grad_output with the taps flipped and padding
// 2 - p (the full correlation: gx[ih] = sum over i of gy[ih - (2 - pt) + i] * w[2 - i]).
bool grad_input_in_place(const ConvGeom& g) { return in_place_3x3(g) && (g.sh == 2 || g.K == g.C); }

void grad_input_3x3_f32(const ConvGeom& g, const DwKernels& kern, const float* gy, const float* w, float* gx) {
  const std::int64_t m = g.K / g.C;
  const Blocks bl = row_blocks(g.H, g.N * g.C, (m + 2) * g.W * static_cast<std::int64_t>(sizeof(float)),
                               kPlaneBlockBytes);
  const bool stream = stream_output(g.N * g.C * g.H * g.W);
  parallel_units(g.N * g.C * bl.count, m * bl.rows * g.W * 9 / (g.sh * g.sw), [&](std::int64_t unit) {
    const std::int64_t nc = unit / bl.count, b = unit % bl.count, n = nc / g.C, c = nc % g.C;
    const std::int64_t ih0 = b * bl.rows, ih1 = ih0 + bl.rows_of(b, g.H);
    // gx rows [ih0, ih1) as rows [0, ih1 - ih0) of `rows`, the padding shifted to match.
    write_unit(kern, stream, gx + (nc * g.H + ih0) * g.W, (ih1 - ih0) * g.W, [&](float* rows) {
      if (g.sh == 2) {
        kern.grad_input_3x3s2(gy + (n * g.K + c * m) * g.OH * g.OW, m, g.OH, g.OW, w + c * m * 9, g.pt + ih0, g.pl,
                              0, ih1 - ih0, g.W, rows);
        return;
      }
      float flipped[9];
      for (int t = 0; t < 9; ++t) flipped[t] = w[c * 9 + 8 - t];
      kern.conv_3x3[0](gy + nc * g.OH * g.OW, g.OH, g.OW, 2 - g.pt - ih0, 2 - g.pl, flipped, 0.0f, false, 0,
                       ih1 - ih0, g.W, rows);
    });
  });
}

// Grad-input (the phases: conv_depthwise_units.h). gy is packed once per unit with the
// phases' U rows / V columns of zeros in front, so the phases' outputs are flat pixels
// q * Wg + r like the forward's. Stride 1 has one phase, stored straight into gx;
// otherwise each phase is stored compactly and then spread into gx's rows and columns.
void grad_input_f32(const ConvGeom& g, const float* gy, const float* w, float* gx) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  if (grad_input_in_place(g)) return grad_input_3x3_f32(g, kern, gy, w, gx);
  const std::int64_t m = g.K / g.C, taps = g.kh * g.kw;
  const GradInputPhases phs = grad_input_phases(g);
  const std::int64_t U = phs.U, V = phs.V;
  const std::vector<PhaseRange>& qr = phs.rows;
  const std::vector<PhaseRange>& rc = phs.cols;
  const PhaseRange qall = phs.all_rows, call = phs.all_cols;
  const std::int64_t Wg = call.hi - call.lo + V, max_cols = call.hi - call.lo;
  const Blocks bl = row_blocks(qall.hi - qall.lo, g.N * g.C,
                               (m * Wg + g.sh * g.W) * static_cast<std::int64_t>(sizeof(float)), kPlaneBlockBytes);
  const PlaneGeom pg = make_plane_geom(bl.rows + U, Wg, U - qall.lo, V - call.lo, 1, 1, kern.lanes);

  // Per phase: tap offsets in the block's planes (all m of them) and weight indices
  // relative to channel c's first weight.
  const std::int64_t phases = g.sh * g.sw;
  std::vector<std::vector<std::int64_t>> off(phases), wid(phases);
  for (std::int64_t j = 0; j < m; ++j)
    for (std::int64_t i = 0; i < g.kh; ++i)
      for (std::int64_t jj = 0; jj < g.kw; ++jj) {
        const std::int64_t ph = (i * g.dh % g.sh) * g.sw + jj * g.dw % g.sw;
        off[ph].push_back(j * pg.size + (U - i * g.dh / g.sh) * Wg + (V - jj * g.dw / g.sw));
        wid[ph].push_back(j * taps + i * g.kw + jj);
      }
  // The rows of phase a in block b.
  auto phase_rows = [&](std::int64_t a, std::int64_t b) {
    const std::int64_t lo = qall.lo + b * bl.rows;
    return PhaseRange{std::max(qr[a].lo, lo), std::min(qr[a].hi, lo + bl.rows)};
  };
  StoreMaps maps(Wg, kern.lanes);
  for (std::int64_t b = 0; b < bl.count; ++b)
    for (std::int64_t ph = 0; ph < phases; ++ph) {
      const PhaseRange q = phase_rows(ph / g.sw, b);
      maps.add(q.hi - q.lo, rc[ph % g.sw].hi - rc[ph % g.sw].lo);
    }
  const bool direct = phases == 1;

  parallel_units(g.N * g.C * bl.count, m * bl.rows * g.W * taps, [&](std::int64_t unit) {
    const std::int64_t nc = unit / bl.count, b = unit % bl.count, n = nc / g.C, c = nc % g.C;
    const std::int64_t qlo = qall.lo + b * bl.rows;
    float* planes = scratch(m * pg.size + bl.rows * max_cols + m * taps);
    float* phase_out = planes + m * pg.size;
    float* wt = phase_out + bl.rows * max_cols;
    PlaneGeom pgb = pg;
    pgb.pt -= b * bl.rows;
    for (std::int64_t j = 0; j < m; ++j)
      pack_planes(gy + (n * g.K + c * m + j) * g.OH * g.OW, g.OW, 1, g.OH, g.OW, pgb, planes + j * pg.size);
    float* gx_plane = gx + nc * g.H * g.W;
    for (std::int64_t ph = 0; ph < phases; ++ph) {
      const std::int64_t a = ph / g.sw, bc = ph % g.sw;
      const PhaseRange q = phase_rows(a, b), r = rc[bc];
      const std::int64_t rows = q.hi - q.lo, cols = r.hi - r.lo, ntaps = static_cast<std::int64_t>(off[ph].size());
      if (rows <= 0 || cols <= 0) continue;
      for (std::int64_t t = 0; t < ntaps; ++t) wt[t] = w[c * m * taps + wid[ph][t]];
      const std::vector<DwStore>& map = maps.get(rows, cols);
      float* out = direct ? gx_plane + (q.lo - qr[0].lo) * g.W : phase_out;
      kern.conv(planes + (q.lo - qlo) * Wg + (r.lo - call.lo), off[ph].data(), wt, ntaps,
                static_cast<std::int64_t>(map.size()), map.data(), 0.0f, false, out);
      if (direct) continue;
      spread_strided(phase_out, cols, g.sw, cols, rows,
                     gx_plane + (q.lo * g.sh + a - g.pt) * g.W + r.lo * g.sw + bc - g.pl, g.sh * g.W);
    }
  });
}

}  // namespace

template <typename T>
void depthwise_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y) {
  if constexpr (std::is_same_v<T, float>) {
    if (planes_pay_off(g)) {
      if (layout == Layout::NHWC) return depthwise_forward_nhwc(g, x, w, bias, relu, y);
      return forward_f32(g, x, w, bias, relu, y);
    }
  }
  conv2d_forward_loops(g, layout, x, w, bias, relu, y);
}
template <typename T>
void depthwise_grad_input(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx) {
  if constexpr (std::is_same_v<T, float>) {
    if (planes_pay_off(g)) {
      if (layout == Layout::NHWC) return depthwise_grad_input_nhwc(g, gy, w, gx);
      return grad_input_f32(g, gy, w, gx);
    }
  }
  conv2d_grad_input_loops(g, layout, gy, w, gx);
}
template <typename T>
void depthwise_grad_weight(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw) {
  if constexpr (std::is_same_v<T, float>) {
    if (planes_pay_off(g)) {
      if (layout == Layout::NHWC) return depthwise_grad_weight_nhwc(g, gy, x, gw);
      return grad_weight_f32(g, gy, x, gw);
    }
  }
  conv2d_grad_weight_loops(g, layout, gy, x, gw);
}

#define CONVKIT_INSTANTIATE(T)                                                                            \
  template void depthwise_forward<T>(const ConvGeom&, Layout, const T*, const T*, const T*, bool, T*); \
  template void depthwise_grad_input<T>(const ConvGeom&, Layout, const T*, const T*, T*);             \
  template void depthwise_grad_weight<T>(const ConvGeom&, Layout, const T*, const T*, T*);
CONVKIT_INSTANTIATE(float)
CONVKIT_INSTANTIATE(double)
#undef CONVKIT_INSTANTIATE

}  // namespace convkit
