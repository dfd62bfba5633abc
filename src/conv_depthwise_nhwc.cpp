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

// The output pixels of one dimension whose every tap reads inside the image: o in
// [lo, hi) with o*s - pad >= 0 and o*s - pad + (k-1)*d <= size - 1.
PhaseRange inside(std::int64_t size, std::int64_t pad, std::int64_t s, std::int64_t k, std::int64_t d,
                  std::int64_t out) {
  const std::int64_t lo = std::min(ceil_div(pad, s), out), last = size - 1 - (k - 1) * d + pad;
  return {lo, last < 0 ? lo : std::clamp(last / s + 1, lo, out)};
}

// Forward and grad-weight read the input the same way. Output pixels whose taps all lie
// inside the image read x in place (no copy: depthwise convolution does ~2 FLOPs per
// byte, so a copy of the input costs as much as the convolution). The others, the edge
// rows and the edge columns of the other rows, read a zero-padded copy of the few input
// pixels they need (a segment: rows of `width` padded pixels from padded column s0, ld
// lanes each). A multiplier-m layer (m > 1) always copies: lane c of its output reads
// input channel c / m. So does a strided layer's grad-weight (strided_in_place = false):
// it reads each input pixel about once, so the copy is cheap against the reads it makes
// regular (a 64-byte aligned, contiguous block in L2): in place, MobileNet's stride-2
// layer ran grad-weight 15 against 24 GFLOP/s copied. Its forward reads in place: the
// copy took half its time, and in place it runs 1.27x faster at batch 8 (14 MB of
// input), 1.41x on one image, one thread (1.13x and 1.27x at two).
struct NhwcSegment {
  std::int64_t o0, o1, s0, width;  // output columns [o0, o1), read from padded columns [s0, s0 + width)
  std::vector<std::int64_t> off;   // tap (i, j) at ((i*dh) * width + j*dw) * ld
};

// One call of a kernel: output pixels (oh, [o0, o1)) of an image read from `in`, pixel
// o0's tap t at in + off[t], the next pixel pix_step further.
struct NhwcPiece {
  const float* in;
  std::int64_t pix_step;
  const std::int64_t* off;
  std::int64_t oh, o0, o1;
};

struct NhwcInput {
  std::int64_t Wp, ld;
  Blocks blocks;
  PhaseRange rows_inside, cols_inside;  // in place; empty when every pixel reads a copy
  std::vector<std::int64_t> off_inside;  // tap (i, j) at (i*dh * W + j*dw) * C in x
  NhwcSegment full, left, right;         // edge rows; the edge columns of the other rows

  std::int64_t rows_in(std::int64_t rows, const ConvGeom& g) const { return (rows - 1) * g.sh + g.dh * (g.kh - 1) + 1; }
};

NhwcSegment segment(const ConvGeom& g, std::int64_t o0, std::int64_t o1, std::int64_t ld) {
  const std::int64_t s0 = o0 * g.sw, width = o1 > o0 ? (o1 - 1) * g.sw + g.dw * (g.kw - 1) + 1 - s0 : 0;
  NhwcSegment seg{o0, o1, s0, width, {}};
  for (std::int64_t i = 0; i < g.kh; ++i)
    for (std::int64_t j = 0; j < g.kw; ++j) seg.off.push_back((i * g.dh * width + j * g.dw) * ld);
  return seg;
}

NhwcInput plan_input(const ConvGeom& g, int lanes, bool strided_in_place) {
  NhwcInput in{g.W + g.pl + g.pr, lane_count(g.K, lanes), {}, {}, {}, {}, {}, {}, {}};
  in.blocks = row_blocks(g.OH, g.N, g.sh * in.Wp * in.ld * static_cast<std::int64_t>(sizeof(float)), kRowBlockBytes);
  in.rows_inside = inside(g.H, g.pt, g.sh, g.kh, g.dh, g.OH);
  in.cols_inside = inside(g.W, g.pl, g.sw, g.kw, g.dw, g.OW);
  if (g.K != g.C || (g.sh != 1 && !strided_in_place) || in.cols_inside.lo == in.cols_inside.hi)
    in.rows_inside = {0, 0};
  for (std::int64_t i = 0; i < g.kh; ++i)
    for (std::int64_t j = 0; j < g.kw; ++j) in.off_inside.push_back((i * g.dh * g.W + j * g.dw) * g.C);
  in.full = segment(g, 0, g.OW, in.ld);
  in.left = segment(g, 0, in.cols_inside.lo, in.ld);
  in.right = segment(g, in.cols_inside.hi, g.OW, in.ld);
  return in;
}

// Calls fn(piece) for every piece of unit (n, b)'s output rows, copying into ws (room
// for the block's padded rows, in.rows_in(rows) * Wp * ld) what cannot be read in place.
// A piece's input is valid only during its fn call.
template <typename Fn>
void for_each_piece(const ConvGeom& g, const NhwcInput& in, const float* x, std::int64_t n, std::int64_t b,
                    float* ws, const Fn& fn) {
  const std::int64_t r0 = b * in.blocks.rows, r1 = r0 + in.blocks.rows_of(b, g.OH), m = g.K / g.C;
  const float* img = x + n * g.H * g.W * g.C;
  // Output rows [o0, o1) of segment seg: their padded input rows, then the kernel calls.
  auto copied = [&](const NhwcSegment& seg, std::int64_t o0, std::int64_t o1) {
    if (o0 >= o1 || seg.o0 >= seg.o1) return;
    pack_rows(img, g.H, g.W, g.C, {g.K, m, 1, 0}, o0 * g.sh, in.rows_in(o1 - o0, g), g.pt, g.pl - seg.s0,
              seg.width, in.ld, ws);
    for (std::int64_t oh = o0; oh < o1; ++oh)
      fn(NhwcPiece{ws + (oh - o0) * g.sh * seg.width * in.ld, g.sw * in.ld, seg.off.data(), oh, seg.o0, seg.o1});
  };
  const PhaseRange rows = in.rows_inside, cols = in.cols_inside;
  copied(in.full, r0, std::min(r1, rows.lo));
  for (std::int64_t oh = std::max(r0, rows.lo); oh < std::min(r1, rows.hi); ++oh) {
    copied(in.left, oh, oh + 1);
    fn(NhwcPiece{img + ((oh * g.sh - g.pt) * g.W + cols.lo * g.sw - g.pl) * g.C, g.sw * g.C, in.off_inside.data(),
                 oh, cols.lo, cols.hi});
    copied(in.right, oh, oh + 1);
  }
  copied(in.full, std::max(r0, rows.hi), r1);
}

}  // namespace

void depthwise_forward_nhwc(const ConvGeom& g, const float* x, const float* w, const float* bias, bool relu,
                            float* y) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  const std::int64_t taps = g.kh * g.kw;
  const NhwcInput in = plan_input(g, kern.lanes, true);
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
    for_each_piece(g, in, x, n, b, scratch(in.rows_in(rows, g) * in.Wp * in.ld), [&](const NhwcPiece& pc) {
      kern.conv_nhwc(pc.in, pc.pix_step, pc.off, wp.data(), taps, in.ld, bp, relu, pc.o1 - pc.o0, g.K,
                     y + ((n * g.OH + pc.oh) * g.OW + pc.o0) * g.K, g.K);
    });
  });
}

// Grad-weight: one partial sum per (unit, tap, lane), the units then added in order:
// deterministic for any thread count, no atomics. grad_output is read in place.
void depthwise_grad_weight_nhwc(const ConvGeom& g, const float* gy, const float* x, float* gw) {
  const DwKernels& kern = f32_dwconv_kernels(active_isa());
  const std::int64_t taps = g.kh * g.kw;
  const NhwcInput in = plan_input(g, kern.lanes, false);
  const Blocks& bl = in.blocks;
  const std::int64_t units = g.N * bl.count;
  std::vector<float> partial(static_cast<std::size_t>(units * taps * in.ld), 0.0f);
  parallel_units(units, bl.rows * g.OW * g.K * taps, [&](std::int64_t unit) {
    const std::int64_t n = unit / bl.count, b = unit % bl.count, rows = bl.rows_of(b, g.OH);
    float* sums = partial.data() + unit * taps * in.ld;
    for_each_piece(g, in, x, n, b, scratch(in.rows_in(rows, g) * in.Wp * in.ld), [&](const NhwcPiece& pc) {
      const float* gy_row = gy + ((n * g.OH + pc.oh) * g.OW + pc.o0) * g.K;
      // The kernel reads grad_output a channel vector at a time, one cache line per pixel
      // (a stride the hardware prefetcher follows poorly): ask for the whole row first.
      const char* bytes = reinterpret_cast<const char*>(gy_row);
      for (std::int64_t at = 0; at < (pc.o1 - pc.o0) * g.K * std::int64_t(sizeof(float)); at += 64)
        __builtin_prefetch(bytes + at);
      kern.grad_weight_nhwc(pc.in, pc.pix_step, pc.off, taps, in.ld, gy_row, g.K, pc.o1 - pc.o0, g.K, sums);
    });
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
  // Taps from the last to the first, so that a phase's offsets ascend (a stride-1 3x3
  // layer's then take the register-blocked 3x3 kernel).
  for (std::int64_t j = 0; j < m; ++j)
    for (std::int64_t i = g.kh - 1; i >= 0; --i)
      for (std::int64_t jj = g.kw - 1; jj >= 0; --jj) {
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
