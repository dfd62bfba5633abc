// Depthwise operators for NHWC float32 activations: vectors run over channels.
//
// In NHWC a pixel's channels are contiguous, so a vector of channels is one aligned load,
// a stride is a pixel step, and a padded pixel is a zero vector. Each unit of work (an
// image's block of output rows) packs the input rows it reads into a per-thread
// workspace: zero-padded rows of pixels whose channels are rounded up to the vector width
// (`ld` lanes, zeros past the real ones), with channel c of a multiplier-m layer's input
// repeated for its m outputs. The kernels then read every tap of every pixel as aligned,
// unmasked vectors (kernels/cpu/f32_dwconv.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "conv_depthwise.h"
#include "conv_depthwise_units.h"
#include "cpu_features.h"
#include "f32_dwconv.h"

namespace convkit {
namespace {

using namespace depthwise;

// A unit's packed rows stay in L2 (1 MiB per core here) between packing and computing.
constexpr std::int64_t kRowBlockBytes = 256 << 10;

// Which channel of the source pixel each lane holds: lane c < used holds channel
// (c / div) * mul + add; lanes from `used` to the row's ld are zeros.
struct ChannelMap {
  std::int64_t used, div, mul, add;
  bool identity() const { return div == 1 && mul == 1 && add == 0; }
};

// Packs padded rows [r0, r0 + rows) of an H x W image of `src_ch` channels per pixel
// into rows of Wp pixels of ld lanes: padded row r is image row r - pt, padded pixel s
// image pixel s - pl (pt, pl may be negative: the rows start inside the image). Every
// element is written once.
void pack_rows(const float* img, std::int64_t H, std::int64_t W, std::int64_t src_ch, const ChannelMap& cm,
               std::int64_t r0, std::int64_t rows, std::int64_t pt, std::int64_t pl, std::int64_t Wp, std::int64_t ld,
               float* out) {
  const std::int64_t s0 = std::clamp<std::int64_t>(pl, 0, Wp), s1 = std::clamp<std::int64_t>(pl + W, s0, Wp);
  for (std::int64_t r = 0; r < rows; ++r) {
    float* row = out + r * Wp * ld;
    const std::int64_t h = r0 + r - pt;
    if (h < 0 || h >= H) {
      std::fill(row, row + Wp * ld, 0.0f);
      continue;
    }
    std::fill(row, row + s0 * ld, 0.0f);
    std::fill(row + s1 * ld, row + Wp * ld, 0.0f);
    const float* src = img + (h * W + s0 - pl) * src_ch;
    if (cm.identity() && cm.used == ld && ld == src_ch) {  // whole rows: one copy
      std::memcpy(row + s0 * ld, src, sizeof(float) * static_cast<std::size_t>((s1 - s0) * ld));
      continue;
    }
    for (std::int64_t s = s0; s < s1; ++s, src += src_ch) {
      float* px = row + s * ld;
      if (cm.identity())
        std::memcpy(px, src, sizeof(float) * static_cast<std::size_t>(cm.used));
      else
        for (std::int64_t c = 0; c < cm.used; ++c) px[c] = src[(c / cm.div) * cm.mul + cm.add];
      std::fill(px + cm.used, px + ld, 0.0f);
    }
  }
}

std::int64_t lane_count(std::int64_t channels, int width) { return ceil_div(channels, width) * width; }

// Forward and grad-weight read the input the same way: blocks of output rows, each
// packed as (rows - 1) * sh + eh padded input rows of the image, expanded to K lanes.
struct NhwcInput {
  std::int64_t Wp, ld;
  Blocks blocks;
  std::vector<std::int64_t> off;  // tap (i, j) at ((i*dh) * Wp + j*dw) * ld
  std::int64_t rows_in(std::int64_t rows, const ConvGeom& g) const { return (rows - 1) * g.sh + g.dh * (g.kh - 1) + 1; }
};

NhwcInput plan_input(const ConvGeom& g, int lanes) {
  NhwcInput in{g.W + g.pl + g.pr, lane_count(g.K, lanes), {}, {}};
  in.blocks = row_blocks(g.OH, g.N, g.sh * in.Wp * in.ld * static_cast<std::int64_t>(sizeof(float)), kRowBlockBytes);
  for (std::int64_t i = 0; i < g.kh; ++i)
    for (std::int64_t j = 0; j < g.kw; ++j) in.off.push_back((i * g.dh * in.Wp + j * g.dw) * in.ld);
  return in;
}

// Packs unit (n, b)'s input rows into ws.
void pack_input(const ConvGeom& g, const NhwcInput& in, const float* x, std::int64_t n, std::int64_t b, float* ws) {
  const std::int64_t rows = in.blocks.rows_of(b, g.OH), m = g.K / g.C;
  pack_rows(x + n * g.H * g.W * g.C, g.H, g.W, g.C, {g.K, m, 1, 0}, b * in.blocks.rows * g.sh, in.rows_in(rows, g),
            g.pt, g.pl, in.Wp, in.ld, ws);
}

}  // namespace

void depthwise_forward_nhwc(const ConvGeom& g, const float* x, const float* w, const float* bias, bool relu,
                            float* y) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  const std::int64_t taps = g.kh * g.kw;
  const NhwcInput in = plan_input(g, kern.lanes);
  // Weights as [tap][lane], bias as [lane]: once per call.
  std::vector<float> wp(static_cast<std::size_t>((taps + 1) * in.ld), 0.0f);
  float* bp = wp.data() + taps * in.ld;
  for (std::int64_t k = 0; k < g.K; ++k) {
    for (std::int64_t t = 0; t < taps; ++t) wp[static_cast<std::size_t>(t * in.ld + k)] = w[k * taps + t];
    bp[k] = bias ? bias[k] : 0.0f;
  }
  const Blocks& bl = in.blocks;
  parallel_units(g.N * bl.count, bl.rows * g.OW * g.K * taps, [&](std::int64_t unit) {
    const std::int64_t n = unit / bl.count, b = unit % bl.count, rows = bl.rows_of(b, g.OH);
    float* ws = scratch(in.rows_in(rows, g) * in.Wp * in.ld);
    pack_input(g, in, x, n, b, ws);
    for (std::int64_t r = 0; r < rows; ++r)
      kern.conv_nhwc(ws + r * g.sh * in.Wp * in.ld, g.sw * in.ld, in.off.data(), wp.data(), taps, in.ld, bp, relu,
                     g.OW, g.K, y + ((n * g.OH + b * bl.rows + r) * g.OW) * g.K, g.K);
  });
}

// Grad-weight: one partial sum per (unit, tap, lane), the units then added in order:
// deterministic for any thread count, no atomics.
void depthwise_grad_weight_nhwc(const ConvGeom& g, const float* gy, const float* x, float* gw) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  const std::int64_t taps = g.kh * g.kw;
  const NhwcInput in = plan_input(g, kern.lanes);
  const Blocks& bl = in.blocks;
  const std::int64_t units = g.N * bl.count;
  std::vector<float> partial(static_cast<std::size_t>(units * taps * in.ld), 0.0f);
  parallel_units(units, bl.rows * g.OW * g.K * taps, [&](std::int64_t unit) {
    const std::int64_t n = unit / bl.count, b = unit % bl.count, rows = bl.rows_of(b, g.OH);
    const std::int64_t in_size = in.rows_in(rows, g) * in.Wp * in.ld;
    float* ws = scratch(in_size + rows * g.OW * in.ld);
    float* gy_rows = ws + in_size;
    pack_input(g, in, x, n, b, ws);
    pack_rows(gy + n * g.OH * g.OW * g.K, g.OH, g.OW, g.K, {g.K, 1, 1, 0}, b * bl.rows, rows, 0, 0, g.OW, in.ld,
              gy_rows);
    float* sums = partial.data() + unit * taps * in.ld;
    for (std::int64_t r = 0; r < rows; ++r)
      kern.grad_weight_nhwc(ws + r * g.sh * in.Wp * in.ld, g.sw * in.ld, in.off.data(), taps, in.ld,
                            gy_rows + r * g.OW * in.ld, g.OW, sums);
  });
  for (std::int64_t k = 0; k < g.K; ++k)
    for (std::int64_t t = 0; t < taps; ++t) {
      float s = 0.0f;
      for (std::int64_t u = 0; u < units; ++u) s += partial[static_cast<std::size_t>((u * taps + t) * in.ld + k)];
      gw[k * taps + t] = s;
    }
}

// Grad-input: the stride phases (conv_depthwise_units.h) with channels in the lanes.
// grad_output is packed with the phases' U rows and V pixels of zeros in front, once per
// multiplier j with lane c holding channel c*m + j. A phase's outputs are every sw-th
// pixel of every sh-th row of gx: a pixel step, no copy.
void depthwise_grad_input_nhwc(const ConvGeom& g, const float* gy, const float* w, float* gx) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  const std::int64_t m = g.K / g.C, taps = g.kh * g.kw, ld = lane_count(g.C, kern.lanes);
  const GradInputPhases phs = grad_input_phases(g);
  const std::int64_t U = phs.U, V = phs.V;
  const std::vector<PhaseRange>& qr = phs.rows;
  const std::vector<PhaseRange>& rc = phs.cols;
  const PhaseRange qall = phs.all_rows, call = phs.all_cols;
  const std::int64_t Wg = call.hi - call.lo + V;  // packed pixels per row
  const Blocks bl = row_blocks(qall.hi - qall.lo, g.N, m * Wg * ld * static_cast<std::int64_t>(sizeof(float)),
                               kRowBlockBytes);
  const std::int64_t copy_size = (bl.rows + U) * Wg * ld;  // one multiplier's packed rows

  // Per phase: tap offsets and weights as [tap][lane]; a zero bias for every phase.
  const std::int64_t phases = g.sh * g.sw;
  std::vector<std::vector<std::int64_t>> off(phases);
  std::vector<std::vector<float>> wp(phases);
  const std::vector<float> zeros(static_cast<std::size_t>(ld), 0.0f);
  for (std::int64_t j = 0; j < m; ++j)
    for (std::int64_t i = 0; i < g.kh; ++i)
      for (std::int64_t jj = 0; jj < g.kw; ++jj) {
        const std::int64_t ph = (i * g.dh % g.sh) * g.sw + jj * g.dw % g.sw;
        off[ph].push_back(j * copy_size + ((U - i * g.dh / g.sh) * Wg + (V - jj * g.dw / g.sw)) * ld);
        std::vector<float>& row = wp[ph];
        row.resize(row.size() + static_cast<std::size_t>(ld), 0.0f);
        for (std::int64_t c = 0; c < g.C; ++c)
          row[row.size() - static_cast<std::size_t>(ld - c)] = w[(c * m + j) * taps + i * g.kw + jj];
      }

  parallel_units(g.N * bl.count, bl.rows * g.W * g.C * m * taps, [&](std::int64_t unit) {
    const std::int64_t n = unit / bl.count, b = unit % bl.count, qlo = qall.lo + b * bl.rows;
    const std::int64_t qhi = std::min(qall.hi, qlo + bl.rows);
    float* ws = scratch(m * copy_size);
    for (std::int64_t j = 0; j < m; ++j)
      pack_rows(gy + n * g.OH * g.OW * g.K, g.OH, g.OW, g.K, {g.C, 1, m, j}, qlo, qhi - qlo + U, U, V - call.lo, Wg,
                ld, ws + j * copy_size);
    for (std::int64_t ph = 0; ph < phases; ++ph) {
      const std::int64_t a = ph / g.sw, bc = ph % g.sw;
      const PhaseRange r = rc[bc];
      for (std::int64_t q = std::max(qr[a].lo, qlo); q < std::min(qr[a].hi, qhi); ++q)
        kern.conv_nhwc(ws + ((q - qlo) * Wg + r.lo - call.lo) * ld, ld, off[ph].data(), wp[ph].data(),
                       static_cast<std::int64_t>(off[ph].size()), ld, zeros.data(), false, r.hi - r.lo, g.C,
                       gx + ((n * g.H + q * g.sh + a - g.pt) * g.W + r.lo * g.sw + bc - g.pl) * g.C, g.sw * g.C);
    }
  });
}

}  // namespace convkit
