// The direct engine's operators. Every convolution becomes one or more flat-domain
// correlations over padded, stride-phase-split planes (conv_planes.h):
//   forward      one per (image, group): the input's planes, taps at their offsets;
//   grad-input   one per (image, group, output phase): grad_output's planes (stride 1),
//                the phase's taps flipped (see conv2d_grad_input below);
//   grad-weight  outer products of packed grad_output with the input's planes.
// Weights are read in place (no per-call repacking); the planes are the only copy of
// an activation, made once per call into one workspace.
#include "conv_direct.h"

#include <algorithm>
#include <vector>

#include "conv_depthwise.h"
#include "conv_jobs.h"
#include "conv_planes.h"
#include "conv_reference_loops.h"
#include "thread_pool.h"
#include "workspace.h"

namespace convkit {
namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Runs fn(i0, i1) over [0, n) in chunks of at least `grain` items.
template <typename Fn>
void parallel_ranges(std::int64_t n, std::int64_t grain, Fn fn) {
  const std::int64_t per = std::max<std::int64_t>(1, grain);
  parallel_for(ceil_div(n, per), [&](std::int64_t t) { fn(t * per, std::min(n, (t + 1) * per)); });
}

// Packs every channel c of every image n of an N x C x H x W activation stored in
// `layout` with pack(channel, row_stride, col_stride, dst) into planes + (n*C + c) * cs.
template <typename T, typename PackChannel>
const T* pack_all(const T* src, Layout layout, std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                  std::int64_t cs, PackChannel pack, T* planes) {
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

InputPlanes stride_phase_planes(const ConvGeom& g, std::int64_t overrun) {
  const PlaneGeom pg = make_plane_geom(g.H + g.pt + g.pb, g.W + g.pl + g.pr, g.pt, g.pl, g.sh, g.sw, overrun);
  return {{{0, g.OW, pg, {}}}, pg.channel_size(), g.dw, g.pl, g.sw};
}

// The activation itself as its (only) plane: stride 1, no padding, NCHW.
InputPlanes in_place_planes(const ConvGeom& g) {
  return {{{0, g.OW, PlaneGeom{1, 1, 0, 0, g.H, g.W, g.H * g.W}, {}}}, g.H * g.W, g.dw, 0, 1};
}

// Folded windows in column bands: one band over all output columns, or (split) a band
// between each pair of consecutive points where a tap column starts or stops reading
// real input, whichever costs fewer P-pixel tile passes.
InputPlanes folded_planes(const ConvGeom& g, std::int64_t overrun, std::int64_t P) {
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
  return passes(split) < passes(whole) ? split : whole;
}

// Kernel time of a pass over a flat domain plus its packing, in MACs: a packed element
// costs about 35 MACs (narrow folded windows pack at 0.26 ns per element, the kernel
// does 32 MACs a cycle at 4 GHz). With it the choice matches measurements: folded wins
// on DeepLab's dilated layers (+7% at dilation 2, +50% with ASPP's bands), loses on
// LeNet, AlexNet conv1 and stride-2 3x3 layers (-10 to -24%), ties on Inception's 1x7.
template <typename T>
double pass_cost(const DirectKernel<T>& k, std::int64_t nk, std::int64_t npix, std::int64_t entries, double packed) {
  return double(ceil_div(nk, k.R) * k.R) * double(ceil_div(npix, k.P) * k.P) * double(entries) / k.eff +
         35.0 * packed;
}

// The forward's reduction for a column band: one entry per (input channel c, tap (i, j)
// the band reads), taps innermost so consecutive entries read neighbouring input; the
// weight offset (c*kh + i)*kw + j is the entry's index in a weight row. `rows` gets the
// output rows where each entry reads real input (tap_range), for row_bands.
std::vector<Entry> forward_entries(const ConvGeom& g, const InputPlanes& ip, const ColumnBand& b,
                                   std::vector<RowRange>* rows = nullptr) {
  std::vector<Entry> ent;
  for (std::int64_t c = 0; c < g.Cg(); ++c)
    for (std::int64_t i = 0; i < g.kh; ++i)
      for (std::int64_t j = 0; j < g.kw; ++j) {
        if (!b.window.empty() && b.window[j] < 0) continue;
        ent.push_back({c * ip.cs + ip.offset_of(b, i * g.dh, j), (c * g.kh + i) * g.kw + j});
        if (!rows) continue;
        std::int64_t lo, hi, clo, chi;
        tap_range(g.H, g.sh, g.pt, i * g.dh, g.OH, lo, hi);
        tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, clo, chi);
        rows->push_back(clo < chi ? RowRange{lo, hi} : RowRange{0, 0});
      }
  return ent;
}

}  // namespace

template <typename T>
void conv2d_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y) {
  if (layout == Layout::NCHW && is_depthwise(g)) return depthwise_forward(g, x, w, bias, relu, y);
  if (g.N == 0) return;
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), E = Cg * g.kh * g.kw;
  const ConvKernels<T>& ks = conv_kernels<T>();
  const InputPlanes phased = stride_phase_planes(g, 0);
  const DirectKernel<T>& kern_p = choose_direct_kernel(ks, Kg, g.OH * phased.bands[0].pg.Wq);
  const DirectKernel<T>& kern_f = choose_direct_kernel(ks, Kg, g.OH * g.OW);
  const InputPlanes folded = folded_planes(g, 0, kern_f.P);
  double cost_f = 35.0 * double(g.C * folded.cs);
  for (const ColumnBand& b : folded.bands)
    cost_f += pass_cost(kern_f, Kg, g.OH * b.cols, static_cast<std::int64_t>(forward_entries(g, folded, b).size()), 0);
  const int forced = forced_conv_fold();
  const double cost_p = pass_cost(kern_p, Kg, g.OH * phased.bands[0].pg.Wq, E, double(g.C * phased.cs));
  const bool fold = forced >= 0 ? forced == 1 : cost_f < cost_p;
  const DirectKernel<T>& kern = fold ? kern_f : kern_p;
  // A stride-1 layer without padding in NCHW reads its input as is (its stride-phase
  // planes would be a copy with slack), the last tile moved back (DirectJob::exact).
  const bool in_place = layout == Layout::NCHW && !fold && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pb == 0 &&
                        g.pl == 0 && g.pr == 0 && (g.OH - 1) * g.W + g.OW >= kern.P;
  const InputPlanes ip = in_place ? in_place_planes(g) : fold ? folded_planes(g, kern.P, kern.P)
                                                              : stride_phase_planes(g, kern.P);

  Workspace ws;
  const auto planes_at = ws.add<T>(in_place ? 0 : g.N * g.C * ip.cs);
  ws.allocate();
  const T* planes = in_place ? x
                             : pack_all(x, layout, g.N, g.C, g.H, g.W, ip.cs,
                                        [&](const T* src, std::int64_t rs, std::int64_t cs, T* dst) {
                                          ip.pack(src, rs, cs, g.H, g.W, dst);
                                        },
                                        ws.at<T>(planes_at));

  // Jobs: per image, group, column band and row band (the rows where the same taps
  // read real input, see row_bands).
  const ActStrides ys = act_strides(layout, g.K, g.OH, g.OW);
  struct Region {
    const ColumnBand* cb;
    std::vector<Band> rows;
  };
  std::vector<Region> regions;
  for (const ColumnBand& cb : ip.bands) {
    std::vector<RowRange> valid;
    const std::vector<Entry> ent = forward_entries(g, ip, cb, &valid);
    regions.push_back({&cb, row_bands(ent, valid, g.OH, cb.pg.Wq, kern.P)});
  }
  std::vector<DirectJob<T>> jobs;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t grp = 0; grp < g.groups; ++grp)
      for (const Region& rg : regions)
        for (const Band& b : rg.rows) {
          const std::int64_t Wq = rg.cb->pg.Wq;
          jobs.push_back({planes + (n * g.C + grp * Cg) * ip.cs + b.r0 * Wq, b.ent.data(),
                          static_cast<std::int64_t>(b.ent.size()), w + grp * Kg * E, E,
                          bias ? bias + grp * Kg : nullptr,
                          OutMap<T>{y + n * ys.n + grp * Kg * ys.c + b.r0 * ys.h + rg.cb->c0 * ys.w, ys.c, ys.h, ys.w,
                                    b.r1 - b.r0, rg.cb->cols, Wq},
                          Kg, (b.r1 - b.r0 - 1) * Wq + rg.cb->cols, in_place});
        }
  run_direct_jobs(kern, jobs, relu);
}

// Grad-input: gx[c, ih, iw] = sum over k, (i, j) of w[k, c, i, j] * gy[k, oh, ow] with
// oh*sh + i*dh = ih + pt (and likewise for columns). Write u = ih + pt = qh*sh + ra:
// only taps with (i*dh) % sh == ra reach output row phase ra, and they read
// gy row oh = qh - ai, ai = (i*dh) / sh. So each of the sh*sw output phases is a
// stride-1 correlation of gy with the phase's taps, reversed: tap (ai, bj) reads at
// offset -(ai*Wq + bj) from the output pixel. gy is packed once as stride-1 planes with
// Lh zero rows on top and Lw zero columns on the left, just enough that every phase's
// first output pixel (qh0, qw0) can reach back to its farthest tap, and Wq as narrow as
// the widest phase allows (the same width as the forward's planes for stride 1). The
// output map scatters phase pixel (qh, qw) to gx row qh*sh + ra - pt, column
// qw*sw + rb - pl; each gx pixel is in exactly one phase, so gx is written once, never
// zeroed first (a phase without taps stores zeros).
template <typename T>
void conv2d_grad_input(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx) {
  if (layout == Layout::NCHW && is_depthwise(g)) return depthwise_grad_input(g, gy, w, gx);
  if (g.N == 0) return;
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), taps = g.kh * g.kw;

  struct Phase {
    std::int64_t ra, rb, qh0, qw0, rows, cols;
    std::vector<std::int64_t> i, j;  // the phase's taps, by row and column
  };
  // First phase row (or column) q0 with q0*s + r >= pad, and the count below n + pad.
  auto span = [](std::int64_t r, std::int64_t s, std::int64_t pad, std::int64_t n, std::int64_t& q0) {
    q0 = r >= pad ? 0 : ceil_div(pad - r, s);
    return n + pad - r > 0 ? ceil_div(n + pad - r, s) - q0 : 0;
  };
  std::vector<Phase> phases;
  std::int64_t Lh = 0, Lw = 0, Hq = 0, Wq = 0, max_rows = 0;
  for (std::int64_t ra = 0; ra < g.sh; ++ra) {
    for (std::int64_t rb = 0; rb < g.sw; ++rb) {
      Phase ph{ra, rb, 0, 0, 0, 0, {}, {}};
      ph.rows = span(ra, g.sh, g.pt, g.H, ph.qh0);
      ph.cols = span(rb, g.sw, g.pl, g.W, ph.qw0);
      if (ph.rows <= 0 || ph.cols <= 0) continue;
      for (std::int64_t i = 0; i < g.kh; ++i)
        if ((i * g.dh) % g.sh == ra) ph.i.push_back(i), Lh = std::max(Lh, i * g.dh / g.sh - ph.qh0);
      for (std::int64_t j = 0; j < g.kw; ++j)
        if ((j * g.dw) % g.sw == rb) ph.j.push_back(j), Lw = std::max(Lw, j * g.dw / g.sw - ph.qw0);
      max_rows = std::max(max_rows, ph.rows);
      phases.push_back(std::move(ph));
    }
  }
  for (const Phase& ph : phases) {
    Hq = std::max(Hq, ph.qh0 + ph.rows + Lh);
    Wq = std::max(Wq, ph.qw0 + ph.cols + Lw);
  }
  // As in the forward, gy is packed either as stride-phase planes, Wq wide, tap (ai, bj)
  // at offset -(ai*Wq + bj) from the output pixel, or folded: per column phase rb (its
  // row phases share them), bands of its output columns, and in each band one window of
  // the band's width per tap column valid there (the gy columns the band's pixels read
  // through that tap). ASPP's grad-input: 57 columns -> bands of 12, 9 and 12.
  std::vector<std::int64_t> qw0(static_cast<std::size_t>(g.sw), 0), ncols(qw0.size(), 0);
  for (const Phase& ph : phases) qw0[ph.rb] = ph.qw0, ncols[ph.rb] = ph.cols;
  auto tap_cols = [&](std::int64_t j, std::int64_t rb) {  // the band-relative columns tap j reads real gy on
    const std::int64_t bj = j * g.dw / g.sw;
    return RowRange{std::max<std::int64_t>(0, bj - qw0[rb]), std::min(ncols[rb], bj - qw0[rb] + g.OW)};
  };
  // bands[rb] and the elements per gy channel, folded (split where it saves tile passes)
  // or phased (one band per column phase over the shared planes).
  auto column_bands = [&](bool folded, std::int64_t overrun, std::int64_t P, std::int64_t& cs) {
    std::vector<std::vector<ColumnBand>> bands(static_cast<std::size_t>(g.sw));
    const PlaneGeom phased = make_plane_geom(Hq, Wq, Lh, Lw, 1, 1, overrun);
    cs = folded ? 0 : phased.size;
    for (std::int64_t rb = 0; rb < g.sw; ++rb) {
      if (ncols[rb] <= 0) continue;
      if (!folded) {
        bands[rb].push_back({0, ncols[rb], phased, {}});
        continue;
      }
      std::vector<std::int64_t> cuts{0, ncols[rb]};
      for (std::int64_t j = rb; j < g.kw; ++j) {
        const RowRange v = (j * g.dw) % g.sw == rb ? tap_cols(j, rb) : RowRange{0, 0};
        if (v.lo < v.hi) cuts.push_back(v.lo), cuts.push_back(v.hi);
      }
      std::sort(cuts.begin(), cuts.end());
      cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
      auto layout = [&](const std::vector<std::int64_t>& at, std::int64_t& size, double& passes) {
        std::vector<ColumnBand> out;
        for (std::size_t b = 0; b + 1 < at.size(); ++b) {
          ColumnBand band{at[b], at[b + 1] - at[b], make_plane_geom(Hq, at[b + 1] - at[b], Lh, 0, 1, 1, overrun),
                          std::vector<std::int64_t>(static_cast<std::size_t>(g.kw), -1)};
          std::int64_t taps_in = 0;
          for (std::int64_t j = 0; j < g.kw; ++j) {
            const RowRange v = tap_cols(j, rb);
            const bool valid = at.size() == 2 ? v.lo < v.hi : v.lo <= band.c0 && v.hi >= band.c0 + band.cols;
            if ((j * g.dw) % g.sw == rb && valid)
              band.window[j] = size, size += band.pg.size, ++taps_in;
          }
          passes += double(ceil_div(max_rows * band.cols, P) * taps_in);
          out.push_back(std::move(band));
        }
        return out;
      };
      std::int64_t size_whole = 0, size_split = 0;
      double passes_whole = 0, passes_split = 0;
      std::vector<ColumnBand> whole = layout({0, ncols[rb]}, size_whole, passes_whole);
      std::vector<ColumnBand> split = cuts.size() > 2 ? layout(cuts, size_split, passes_split) : whole;
      const bool use_split = cuts.size() > 2 && passes_split < passes_whole;
      for (ColumnBand& b : use_split ? split : whole) {
        for (std::int64_t& o : b.window)
          if (o >= 0) o += cs;
        bands[rb].push_back(std::move(b));
      }
      cs += use_split ? size_split : size_whole;
    }
    return bands;
  };
  // Entries of phase ph in column band b: (tap, k), taps in reverse: consecutive entries
  // then read consecutive weights of the transposed rows below (tap-major weights read
  // k-major were 72 interleaved streams per tile: 30% slower). Tap (ai, bj) reads real
  // gy on phase rows qh with 0 <= qh - ai < OH (`valid`, for row_bands).
  auto entries = [&](const Phase& ph, const ColumnBand& b, std::int64_t cs, std::vector<RowRange>* valid) {
    std::vector<Entry> ent;
    for (auto i = ph.i.rbegin(); i != ph.i.rend(); ++i)
      for (auto j = ph.j.rbegin(); j != ph.j.rend(); ++j) {
        const std::int64_t ai = *i * g.dh / g.sh, bj = *j * g.dw / g.sw;
        if (!b.window.empty() && b.window[*j] < 0) continue;
        const RowRange cols = tap_cols(*j, ph.rb);
        for (std::int64_t k = 0; k < Kg; ++k) {
          ent.push_back({k * cs + (b.window.empty() ? -ai * b.pg.Wq - bj : b.window[*j] - ai * b.pg.Wq),
                         (*i * g.kw + *j) * Kg + k});
          if (valid) valid->push_back(cols.lo < cols.hi ? RowRange{ai - ph.qh0, ai - ph.qh0 + g.OH} : RowRange{0, 0});
        }
      }
    return ent;
  };

  const ConvKernels<T>& ks = conv_kernels<T>();
  const DirectKernel<T>& kern_p = choose_direct_kernel(ks, Cg, max_rows * Wq);
  const std::int64_t widest = *std::max_element(ncols.begin(), ncols.end());
  const DirectKernel<T>& kern_f = choose_direct_kernel(ks, Cg, max_rows * widest);
  std::int64_t cs_p = 0, cs_f = 0;
  const auto bands_p = column_bands(false, 0, kern_p.P, cs_p), bands_f = column_bands(true, 0, kern_f.P, cs_f);
  double cost_p = 35.0 * double(g.K * cs_p), cost_f = 35.0 * double(g.K * cs_f);
  auto n_entries = [&](const Phase& ph, const ColumnBand& b, std::int64_t cs) {
    return static_cast<std::int64_t>(entries(ph, b, cs, nullptr).size());
  };
  for (const Phase& ph : phases) {
    for (const ColumnBand& b : bands_p[ph.rb])
      cost_p += pass_cost(kern_p, Cg, ph.rows * b.pg.Wq, n_entries(ph, b, cs_p), 0);
    for (const ColumnBand& b : bands_f[ph.rb])
      cost_f += pass_cost(kern_f, Cg, ph.rows * b.pg.Wq, n_entries(ph, b, cs_f), 0);
  }
  const int forced = forced_conv_fold();
  const bool fold = forced >= 0 ? forced == 1 : cost_f < cost_p;
  const DirectKernel<T>& kern = fold ? kern_f : kern_p;
  // When no tap of any phase reaches outside gy (1x1 stride 1; U-Net's 2x2 stride 2),
  // NCHW gy is its own plane: read in place, the last tile moved back (DirectJob::exact).
  bool in_place = layout == Layout::NCHW && !fold && Lh == 0 && Lw == 0 && Wq == g.OW;
  for (const Phase& ph : phases) {
    in_place = in_place && (ph.rows - 1) * Wq + ph.cols >= kern.P;
    for (std::int64_t i : ph.i) in_place = in_place && ph.qh0 + ph.rows - i * g.dh / g.sh <= g.OH;
    for (std::int64_t j : ph.j) in_place = in_place && ph.qw0 + ph.cols - j * g.dw / g.sw <= g.OW;
  }
  std::int64_t cs = 0;
  std::vector<std::vector<ColumnBand>> cbands = column_bands(fold, kern.P, kern.P, cs);
  if (in_place) {
    for (auto& rb : cbands)
      for (ColumnBand& b : rb) b.pg = PlaneGeom{1, 1, 0, 0, g.OH, g.OW, g.OH * g.OW};
    cs = g.OH * g.OW;
  }
  struct Region {
    const Phase* ph;
    const ColumnBand* cb;
    std::vector<Band> rows;
  };
  std::vector<Region> regions;
  for (const Phase& ph : phases)
    for (const ColumnBand& b : cbands[ph.rb]) {
      std::vector<RowRange> valid;
      const std::vector<Entry> ent = entries(ph, b, cs, &valid);
      regions.push_back({&ph, &b, row_bands(ent, valid, ph.rows, b.pg.Wq, kern.P)});
    }

  Workspace ws;
  const auto planes_at = ws.add<T>(in_place ? 0 : g.N * g.K * cs);
  const auto wt_at = ws.add<T>(g.K * Cg * taps);
  ws.allocate();
  // Weights transposed to (groups, C/groups, kh, kw, K/groups): each output channel c's
  // weights one contiguous row, read in order, as in the forward. In place they are
  // 288-byte runs 9 KiB apart on a 256-channel 3x3 layer, which the prefetchers serve
  // poorly once they outgrow L2 (14x14 grad-input: 90-160 GFLOP/s run to run; now
  // 120-145, DeepLab's 3x3 d2: 130 -> 170).
  T* wt = ws.at<T>(wt_at);
  parallel_for(g.groups, [&](std::int64_t grp) {
    ks.transpose(w + grp * Kg * Cg * taps, Cg * taps, wt + grp * Cg * taps * Kg, Kg, Kg, Cg * taps);
  });
  const PlaneGeom& phased_pg = cbands[phases[0].rb][0].pg;  // shared by every band when not folded
  const T* planes = in_place ? gy
                             : pack_all(gy, layout, g.N, g.K, g.OH, g.OW, cs,
                                        [&](const T* src, std::int64_t rs, std::int64_t cstr, T* dst) {
                                          if (!fold) return pack_planes(src, rs, cstr, g.OH, g.OW, phased_pg, dst);
                                          for (std::int64_t rb = 0; rb < g.sw; ++rb)
                                            for (const ColumnBand& b : cbands[rb])
                                              for (std::int64_t j = 0; j < g.kw; ++j) {
                                                if (b.window[j] < 0) continue;
                                                T* window = dst + b.window[j];
                                                pack_window(src, rs, cstr, g.OH, g.OW, -Lh, 1, b.pg.Hq,
                                                            qw0[rb] + b.c0 - j * g.dw / g.sw, 1, b.pg.Wq, window);
                                                std::fill(window + b.pg.Hq * b.pg.Wq, window + b.pg.size, T(0));
                                              }
                                        },
                                        ws.at<T>(planes_at));

  const ActStrides xs = act_strides(layout, g.C, g.H, g.W);
  std::vector<DirectJob<T>> jobs;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t grp = 0; grp < g.groups; ++grp)
      for (const Region& rg : regions) {
        const Phase& ph = *rg.ph;
        const ColumnBand& cb = *rg.cb;
        const std::int64_t Wx = cb.pg.Wq;
        T* out = gx + n * xs.n + grp * Cg * xs.c + (ph.qh0 * g.sh + ph.ra - g.pt) * xs.h +
                 ((ph.qw0 + cb.c0) * g.sw + ph.rb - g.pl) * xs.w;
        const T* in = planes + (n * g.K + grp * Kg) * cs + (ph.qh0 + Lh) * Wx + (fold ? 0 : ph.qw0 + Lw);
        for (const Band& b : rg.rows)
          jobs.push_back({in + b.r0 * Wx, b.ent.data(), static_cast<std::int64_t>(b.ent.size()),
                          wt + grp * Cg * Kg * taps, Kg * taps, nullptr,
                          OutMap<T>{out + b.r0 * g.sh * xs.h, xs.c, g.sh * xs.h, g.sw * xs.w, b.r1 - b.r0, cb.cols, Wx},
                          Cg, (b.r1 - b.r0 - 1) * Wx + cb.cols, in_place});
      }
  run_direct_jobs(kern, jobs, false);
}

// Grad-weight: gw[k, c, t] = sum over images n and output pixels p of
// gy[n, k, p] * planes[n, c][p + off(t)]. Each task owns a block of KB output channels x
// a range of R-entry blocks (x a fixed slice of the batch when the rest gives too few
// tasks) and sums in a fixed order, so results do not depend on the thread count; the
// batch slices are added in order at the end. No atomics.
template <typename T>
void conv2d_grad_weight(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw) {
  if (layout == Layout::NCHW && is_depthwise(g)) return depthwise_grad_weight(g, gy, x, gw);
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), E = Cg * g.kh * g.kw, OHW = g.OH * g.OW;
  if (g.N == 0) {
    std::fill(gw, gw + g.K * E, T(0));
    return;
  }
  const ConvKernels<T>& ks = conv_kernels<T>();
  const GwKernel<T>& kern = cheapest(ks.gw, forced_conv_kernel(true), Kg, [](const auto& k) { return k.KB; }, E,
                                     [](const auto& k) { return k.R; });
  const std::int64_t R = kern.R, KB = kern.KB, nkb = ceil_div(Kg, KB), neb = ceil_div(E, R);
  const InputPlanes ip = stride_phase_planes(g, 0);  // reads only real output pixels: never folded
  const PlaneGeom& pg = ip.bands[0].pg;
  // Entries tap-major, (tap, c), so that a block of R entries mostly shares one tap and
  // with it the output pixels where that tap reads real input: the block's kernel calls
  // run over that box only (ASPP's dilation-12 taps read zeros on 40% of the pixels).
  // Padding entries at the end re-read the last one and are discarded.
  const std::int64_t taps = g.kh * g.kw;
  std::vector<std::int64_t> off(static_cast<std::size_t>(neb * R));
  std::vector<std::int64_t> box(static_cast<std::size_t>(neb * 4));  // rows [0], [1), cols [2], [3) per block
  for (std::int64_t e = 0; e < neb * R; ++e) {
    const std::int64_t t = std::min(e, E - 1) / Cg, c = std::min(e, E - 1) % Cg, i = t / g.kw, j = t % g.kw;
    off[e] = c * ip.cs + ip.offset_of(ip.bands[0], i * g.dh, j);
    std::int64_t r0, r1, c0, c1;
    tap_range(g.H, g.sh, g.pt, i * g.dh, g.OH, r0, r1);
    tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, c0, c1);
    std::int64_t* b = &box[(e / R) * 4];
    if (e % R == 0 || b[0] >= b[1] || b[2] >= b[3]) b[0] = r0, b[1] = r1, b[2] = c0, b[3] = c1;
    if (r0 < r1 && c0 < c1)
      b[0] = std::min(b[0], r0), b[1] = std::max(b[1], r1), b[2] = std::min(b[2], c0), b[3] = std::max(b[3], c1);
  }

  // Tasks: (batch slice, group, channel block, chunk of entry blocks). The slices and
  // chunks depend on the shape only (the batch split changes the summation order).
  const double flops = 2.0 * double(g.N * OHW) * double(g.groups * nkb * KB) * double(neb * R);
  const std::int64_t want = std::clamp<std::int64_t>(static_cast<std::int64_t>(flops / kMinTaskFlops), 1, 16);
  const std::int64_t blocks = g.groups * nkb;
  const std::int64_t eb_per_chunk = ceil_div(neb, std::clamp<std::int64_t>(ceil_div(want, blocks), 1, neb));
  const std::int64_t nec = ceil_div(neb, eb_per_chunk);  // no empty chunk
  const std::int64_t nslices = std::clamp<std::int64_t>(ceil_div(want, blocks * nec), 1, g.N);
  const std::int64_t n_per_slice = ceil_div(g.N, nslices);
  // Sums acc[slice][group][channel block][entry][KB]: per block an (entries x KB) matrix,
  // the transpose of that block of gw.
  const std::int64_t acc_block = neb * R * KB, acc_slice = blocks * acc_block;

  Workspace ws;
  const auto planes_at = ws.add<T>(g.N * g.C * pg.channel_size());
  const auto gyp_at = ws.add<T>(blocks * g.N * OHW * KB);
  const auto acc_at = ws.add<T>(nslices * acc_slice);
  const bool permute = g.kh * g.kw > 1 && Cg > 1;  // acc's (tap, c) rows differ from gw's (c, tap)
  const auto tmp_at = ws.add<T>(permute ? g.K * E : 0);
  ws.allocate();
  T *gyp = ws.at<T>(gyp_at), *acc = ws.at<T>(acc_at);
  const T* planes = pack_all(x, layout, g.N, g.C, g.H, g.W, pg.channel_size(),
                             [&](const T* src, std::int64_t rs, std::int64_t cs, T* dst) {
                               pack_planes(src, rs, cs, g.H, g.W, pg, dst);
                             },
                             ws.at<T>(planes_at));
  const ActStrides gys = act_strides(layout, g.K, g.OH, g.OW);

  // gy packed per (group, channel block, image): [pixel][KB channels], zeros past Kg. For
  // NCHW a transpose (the SIMD one: element by element it took up to half of
  // grad-weight's time); pixel p is at p * gys.w in either layout.
  parallel_ranges(blocks * g.N, (1 << 16) / (OHW * KB), [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) {
      const std::int64_t n = i % g.N, blk = i / g.N, kk1 = std::min(KB, Kg - (blk % nkb) * KB);
      const T* src = gy + n * gys.n + ((blk / nkb) * Kg + (blk % nkb) * KB) * gys.c;
      T* dst = gyp + i * OHW * KB;
      if (gys.w == 1) {
        ks.transpose(src, gys.c, dst, KB, kk1, OHW);
      } else {
        for (std::int64_t p = 0; p < OHW; ++p) std::copy_n(src + p * gys.w, kk1, dst + p * KB);
      }
      if (kk1 < KB)
        for (std::int64_t p = 0; p < OHW; ++p) std::fill(dst + p * KB + kk1, dst + (p + 1) * KB, T(0));
    }
  });

  // A chunk of output rows whose packed gy (<= 32 KiB) stays in L1 across entry blocks.
  const std::int64_t chunk_rows = std::max<std::int64_t>(1, (8192 / KB) / g.OW);
  parallel_for(nslices * blocks * nec, [&](std::int64_t task) {
    const std::int64_t ec = task % nec, blk = (task / nec) % blocks, slice = task / (nec * blocks);
    const std::int64_t grp = blk / nkb;
    const std::int64_t eb0 = ec * eb_per_chunk, eb1 = std::min(neb, eb0 + eb_per_chunk);
    T* acc_blk = acc + slice * acc_slice + blk * acc_block;
    std::fill(acc_blk + eb0 * R * KB, acc_blk + eb1 * R * KB, T(0));
    const std::int64_t n1 = std::min(g.N, (slice + 1) * n_per_slice);
    for (std::int64_t n = slice * n_per_slice; n < n1; ++n) {
      const T* gyn = gyp + (blk * g.N + n) * OHW * KB;
      const T* xn = planes + (n * g.C + grp * Cg) * pg.channel_size();
      for (std::int64_t oh0 = 0; oh0 < g.OH; oh0 += chunk_rows) {
        for (std::int64_t eb = eb0; eb < eb1; ++eb) {
          const std::int64_t* b = &box[eb * 4];
          const std::int64_t r0 = std::max(oh0, b[0]), r1 = std::min(oh0 + chunk_rows, b[1]);
          if (r0 >= r1 || b[2] >= b[3]) continue;
          kern.fn(GwTile<T>{gyn + (r0 * g.OW + b[2]) * KB, xn + r0 * pg.Wq + b[2], off.data() + eb * R, r1 - r0,
                            b[3] - b[2], g.OW * KB, pg.Wq, acc_blk + eb * R * KB});
        }
      }
    }
  });

  // gw = the slices' sums added in order, each block transposed: acc rows are entries
  // (tap, c), so into tmp as gw[k][t][c], then each row of it into place as gw[k][c][t].
  T* tmp = permute ? ws.at<T>(tmp_at) : gw;
  const std::int64_t rows_per_task = 256;
  const std::int64_t echunks = ceil_div(E, rows_per_task);
  parallel_for(blocks * echunks, [&](std::int64_t t) {
    const std::int64_t blk = t / echunks, e0 = (t % echunks) * rows_per_task, e1 = std::min(E, e0 + rows_per_task);
    const std::int64_t kb = blk % nkb, kk1 = std::min(KB, Kg - kb * KB);
    T* sum = acc + blk * acc_block + e0 * KB;
    for (std::int64_t slice = 1; slice < nslices; ++slice) {
      const T* part = sum + slice * acc_slice;
      for (std::int64_t i = 0; i < (e1 - e0) * KB; ++i) sum[i] += part[i];
    }
    ks.transpose(sum, KB, tmp + ((blk / nkb) * Kg + kb * KB) * E + e0, E, e1 - e0, kk1);
  });
  if (permute)
    parallel_ranges(g.K, (1 << 14) / E, [&](std::int64_t k0, std::int64_t k1) {
      for (std::int64_t k = k0; k < k1; ++k) ks.transpose(tmp + k * E, Cg, gw + k * E, taps, taps, Cg);
    });
}

#define CONVKIT_INSTANTIATE(T)                                                                                  \
  template void conv2d_forward<T>(const ConvGeom&, Layout, const T*, const T*, const T*, bool, T*);            \
  template void conv2d_grad_input<T>(const ConvGeom&, Layout, const T*, const T*, T*);                          \
  template void conv2d_grad_weight<T>(const ConvGeom&, Layout, const T*, const T*, T*);
CONVKIT_INSTANTIATE(float)
CONVKIT_INSTANTIATE(double)
#undef CONVKIT_INSTANTIATE

}  // namespace convkit
