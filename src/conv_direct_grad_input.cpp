// The direct engine's grad-input (and so conv_transpose2d's forward).
#include <vector>

#include "conv_direct_planes.h"
#include "workspace.h"

namespace convkit {

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
void direct_grad_input(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx) {
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
  // Only the phases that hold gx pixels: row phase (ih + pt) % sh of gx rows ih < H, at
  // most min(H, sh) of them (a stride near 2^31 must not loop over every residue).
  for (std::int64_t ih = 0; ih < std::min(g.H, g.sh); ++ih) {
    const std::int64_t ra = (ih + g.pt) % g.sh;
    for (std::int64_t iw = 0; iw < std::min(g.W, g.sw); ++iw) {
      const std::int64_t rb = (iw + g.pl) % g.sw;
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
      const bool use_split = cuts.size() > 2 && passes_split < kSplitGain * passes_whole;
      for (ColumnBand& b : use_split ? split : whole) {
        for (std::int64_t& o : b.window)
          if (o >= 0) o += cs;
        bands[rb].push_back(std::move(b));
      }
      cs += use_split ? size_split : size_whole;
    }
    return bands;
  };
  // Entries of phase ph in column band b, taps in reverse, ordered for the weights'
  // layout (w_in_place, below): transposed rows (c; kh, kw, k) are read (tap, k), so
  // consecutive entries read consecutive weights (tap-major weights read k-major were 72
  // interleaved streams per tile: 30% slower); in-place (k, c, kh, kw) weights are read
  // (k, tap), an output channel block's R*kh*kw weights of one k at a time. Tap (ai, bj)
  // reads real gy on phase rows qh with 0 <= qh - ai < OH (`valid`, for row_bands).
  // Weights: transposed once per call (rows of kh*kw*K values, one per input channel c,
  // read in order as in the forward), or in place on small images. The copy costs a
  // pass of its own through L3; in place, the rows are 288-byte runs 9 KiB apart on a
  // 256-channel 3x3 layer, which the kernels prefetch (DirectJob::prefetch_w) but which
  // cost more to read (the kernel choice counts it: eff_w_in_place), more still
  // once they outgrow L2 and are read again by each group of tiles. Measured
  // single-thread, in place against transposed: 14 x 14 +18%, 17 x 17 (Inception's 1x7)
  // +4%, 33 x 33 -10%, 19 x 19 1x1 (a plain, cheap transpose) -3%.
  const bool w_in_place = taps > 1 && g.N * g.H * g.W <= 512;
  auto entries = [&](const Phase& ph, const ColumnBand& b, std::int64_t cs, std::vector<RowRange>& valid) {
    struct Tap {
      std::int64_t x, w;  // offset in a gy channel's planes, in a weight row (k = 0)
      RowRange rows;      // valid rows
    };
    std::vector<Tap> tap;
    for (auto i = ph.i.rbegin(); i != ph.i.rend(); ++i)
      for (auto j = ph.j.rbegin(); j != ph.j.rend(); ++j) {
        if (!b.window.empty() && b.window[*j] < 0) continue;
        const std::int64_t ai = *i * g.dh / g.sh, bj = *j * g.dw / g.sw;
        const RowRange cols = tap_cols(*j, ph.rb);
        tap.push_back({b.window.empty() ? -ai * b.pg.Wq - bj : b.window[*j] - ai * b.pg.Wq,
                       w_in_place ? *i * g.kw + *j : (*i * g.kw + *j) * Kg,
                       cols.lo < cols.hi ? RowRange{ai - ph.qh0, ai - ph.qh0 + g.OH} : RowRange{0, 0}});
      }
    const std::int64_t ntap = static_cast<std::int64_t>(tap.size());
    std::vector<Entry> ent;
    ent.reserve(Kg * ntap);
    for (std::int64_t outer = 0; outer < (w_in_place ? Kg : ntap); ++outer)
      for (std::int64_t inner = 0; inner < (w_in_place ? ntap : Kg); ++inner) {
        const std::int64_t k = w_in_place ? outer : inner;
        const Tap& t = tap[static_cast<std::size_t>(w_in_place ? inner : outer)];
        ent.push_back({k * cs + t.x, t.w + (w_in_place ? k * Cg * taps : k)});
        valid.push_back(t.rows);
      }
    return ent;
  };

  const ConvKernels<T>& ks = conv_kernels<T>();
  const DirectKernel<T>& kern_p = choose_direct_kernel(ks, Cg, max_rows * Wq, w_in_place);
  const std::int64_t widest = *std::max_element(ncols.begin(), ncols.end());
  const DirectKernel<T>& kern_f = choose_direct_kernel(ks, Cg, max_rows * widest, w_in_place);
  std::int64_t cs_p = 0, cs_f = 0;
  const auto bands_p = column_bands(false, 0, kern_p.P, cs_p), bands_f = column_bands(true, 0, kern_f.P, cs_f);
  double cost_p = 35.0 * double(g.K * cs_p), cost_f = 35.0 * double(g.K * cs_f);
  auto n_entries = [&](const Phase& ph, const ColumnBand& b) {  // entries(ph, b, ...).size(), not built
    const auto cols = std::count_if(ph.j.begin(), ph.j.end(), [&](std::int64_t j) {
      return b.window.empty() || b.window[j] >= 0;
    });
    return Kg * static_cast<std::int64_t>(ph.i.size()) * cols;
  };
  for (const Phase& ph : phases) {
    for (const ColumnBand& b : bands_p[ph.rb])
      cost_p += pass_cost(kern_p, Cg, ph.rows * b.pg.Wq, n_entries(ph, b), 0, w_in_place);
    for (const ColumnBand& b : bands_f[ph.rb])
      cost_f += pass_cost(kern_f, Cg, ph.rows * b.pg.Wq, n_entries(ph, b), 0, w_in_place);
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
      const std::vector<Entry> ent = entries(ph, b, cs, valid);
      regions.push_back({&ph, &b, row_bands(ent, valid, ph.rows, b.pg.Wq, kern.P)});
    }

  Workspace ws;
  const auto planes_at = ws.add<T>(in_place ? 0 : buffer_size({g.N, g.K, cs}));
  const auto wt_at = ws.add<T>(w_in_place ? 0 : buffer_size({g.K, Cg, taps}));
  ws.allocate();
  // The transpose runs in column chunks, so that both cores share it at batch 1 (one
  // task per group took a sixth of a two-thread 14 x 14 grad-input, the other core idle).
  T* wt = ws.at<T>(wt_at);
  const std::int64_t cols = Cg * taps, chunk = std::max<std::int64_t>(16, (1 << 14) / std::max<std::int64_t>(1, Kg) / 16 * 16);
  const std::int64_t chunks = w_in_place ? 0 : ceil_div(cols, chunk);
  parallel_for(g.groups * chunks, [&](std::int64_t t) {
    const std::int64_t grp = t / chunks, c0 = t % chunks * chunk, n = std::min(chunk, cols - c0);
    ks.transpose(w + grp * Kg * cols + c0, cols, wt + (grp * cols + c0) * Kg, Kg, Kg, n);
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
                          w_in_place ? w + grp * Kg * Cg * taps : wt + grp * Cg * Kg * taps,
                          w_in_place ? taps : Kg * taps, nullptr,
                          OutMap<T>{out + b.r0 * g.sh * xs.h, xs.c, g.sh * xs.h, g.sw * xs.w, b.r1 - b.r0, cb.cols, Wx},
                          Cg, (b.r1 - b.r0 - 1) * Wx + cb.cols, in_place, w_in_place});
      }
  run_direct_jobs(kern, jobs, false);
}

template void direct_grad_input<float>(const ConvGeom&, Layout, const float*, const float*, float*);
template void direct_grad_input<double>(const ConvGeom&, Layout, const double*, const double*, double*);

}  // namespace convkit
