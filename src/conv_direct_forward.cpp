// The direct engine's forward: one flat-domain correlation per (image, group, column
// band, row band) over the input's planes (conv_direct_planes.h), taps at their offsets.
#include <algorithm>
#include <vector>

#include "conv_direct_planes.h"
#include "workspace.h"

namespace convkit {
namespace {

// The taps (i, j) a column band reads: every tap, or (folded) those of the tap columns
// with a window in the band.
std::int64_t band_taps(const ConvGeom& g, const ColumnBand& b) {
  if (b.window.empty()) return g.kh * g.kw;
  return g.kh * std::count_if(b.window.begin(), b.window.end(), [](std::int64_t o) { return o >= 0; });
}

// The forward's reduction for a column band: one entry per (input channel c, tap (i, j)
// the band reads), taps innermost so consecutive entries read neighbouring input; the
// weight offset (c*kh + i)*kw + j is the entry's index in a weight row. `rows` gets the
// output rows where each entry reads real input (tap_range), for row_bands.
std::vector<Entry> forward_entries(const ConvGeom& g, const InputPlanes& ip, const ColumnBand& b,
                                   std::vector<RowRange>& rows) {
  std::vector<Entry> taps;  // per tap: its offset in a channel's planes and in a weight row
  std::vector<RowRange> tap_rows;
  for (std::int64_t i = 0; i < g.kh; ++i)
    for (std::int64_t j = 0; j < g.kw; ++j) {
      if (!b.window.empty() && b.window[j] < 0) continue;
      taps.push_back({ip.offset_of(b, i * g.dh, j), i * g.kw + j});
      std::int64_t lo, hi, clo, chi;
      tap_range(g.H, g.sh, g.pt, i * g.dh, g.OH, lo, hi);
      tap_range(g.W, g.sw, g.pl, j * g.dw, g.OW, clo, chi);
      tap_rows.push_back(clo < chi ? RowRange{lo, hi} : RowRange{0, 0});
    }
  std::vector<Entry> ent;
  ent.reserve(g.Cg() * taps.size());
  for (std::int64_t c = 0; c < g.Cg(); ++c)
    for (const Entry& t : taps) ent.push_back({c * ip.cs + t.x, c * g.kh * g.kw + t.w});
  for (std::int64_t c = 0; c < g.Cg(); ++c) rows.insert(rows.end(), tap_rows.begin(), tap_rows.end());
  return ent;
}

}  // namespace

template <typename T>
void direct_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y) {
  if (g.N == 0) return;
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), E = Cg * g.kh * g.kw;
  const ConvKernels<T>& ks = conv_kernels<T>();
  const InputPlanes phased = stride_phase_planes(g, 0);
  const DirectKernel<T>& kern_p = choose_direct_kernel(ks, Kg, g.OH * phased.bands[0].pg.Wq);
  const DirectKernel<T>& kern_f = choose_direct_kernel(ks, Kg, g.OH * g.OW);
  const InputPlanes folded = folded_planes(g, 0, kern_f.P);
  double cost_f = 35.0 * double(g.C * folded.cs);
  for (const ColumnBand& b : folded.bands)
    cost_f += pass_cost(kern_f, Kg, g.OH * b.cols, Cg * band_taps(g, b), 0);
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
  const auto planes_at = ws.add<T>(in_place ? 0 : buffer_size({g.N, g.C, ip.cs}));
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
    const std::vector<Entry> ent = forward_entries(g, ip, cb, valid);
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
                          OutMap<T>{y + n * ys.n + grp * Kg * ys.c + b.r0 * ys.h + rg.cb->c0 * ys.w, ys.c, ys.h,
                                    ys.w, b.r1 - b.r0, rg.cb->cols, Wq},
                          Kg, (b.r1 - b.r0 - 1) * Wq + rg.cb->cols, in_place});
        }
  run_direct_jobs(kern, jobs, relu);
}

template void direct_forward<float>(const ConvGeom&, Layout, const float*, const float*, const float*, bool, float*);
template void direct_forward<double>(
    const ConvGeom&, Layout, const double*, const double*, const double*, bool, double*);

}  // namespace convkit
