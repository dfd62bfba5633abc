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

// Packs channel c of image n, for every (n, c) of an N x C x H x W activation stored in
// `layout`, into planes + (n*C + c) * channel_size; returns planes.
template <typename T>
T* pack_all_planes(const T* src, Layout layout, std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                   const PlaneGeom& pg, T* planes) {
  const ActStrides s = act_strides(layout, C, H, W);
  const std::int64_t cs = pg.channel_size();
  parallel_ranges(N * C, (1 << 16) / cs, [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i)
      pack_planes(src + (i / C) * s.n + (i % C) * s.c, s.h, s.w, H, W, pg, planes + i * cs);
  });
  return planes;
}

// The forward's (and grad-weight's) reduction: one entry per (input channel c, tap
// (i, j)) of a group, taps innermost so consecutive entries read neighbouring input;
// the weight offset (c*kh + i)*kw + j is the entry's index in a weight row.
std::vector<Entry> forward_entries(const ConvGeom& g, const PlaneGeom& pg) {
  std::vector<Entry> ent;
  ent.reserve(static_cast<std::size_t>(g.Cg() * g.kh * g.kw));
  for (std::int64_t c = 0; c < g.Cg(); ++c)
    for (std::int64_t i = 0; i < g.kh; ++i)
      for (std::int64_t j = 0; j < g.kw; ++j)
        ent.push_back({c * pg.channel_size() + pg.offset_of(i * g.dh, j * g.dw), static_cast<std::int64_t>(ent.size())});
  return ent;
}

PlaneGeom input_planes(const ConvGeom& g, std::int64_t overrun) {
  return make_plane_geom(g.H + g.pt + g.pb, g.W + g.pl + g.pr, g.pt, g.pl, g.sh, g.sw, overrun);
}

}  // namespace

template <typename T>
void conv2d_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y) {
  if (depthwise_handles<T>(g, layout)) return depthwise_forward(g, layout, x, w, bias, relu, y);
  if (g.N == 0) return;
  const std::int64_t Cg = g.Cg(), Kg = g.Kg();
  const DirectKernel<T>& kern = choose_direct_kernel(conv_kernels<T>(), Kg, g.OH * ceil_div(g.W + g.pl + g.pr, g.sw));
  const PlaneGeom pg = input_planes(g, kern.P);
  const std::vector<Entry> ent = forward_entries(g, pg);
  const std::int64_t E = static_cast<std::int64_t>(ent.size());

  Workspace ws;
  const auto planes_at = ws.add<T>(g.N * g.C * pg.channel_size());
  ws.allocate();
  const T* planes = pack_all_planes(x, layout, g.N, g.C, g.H, g.W, pg, ws.at<T>(planes_at));

  const ActStrides ys = act_strides(layout, g.K, g.OH, g.OW);
  std::vector<DirectJob<T>> jobs;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t grp = 0; grp < g.groups; ++grp)
      jobs.push_back({planes + (n * g.C + grp * Cg) * pg.channel_size(), ent.data(), E, w + grp * Kg * E, E,
                      bias ? bias + grp * Kg : nullptr,
                      OutMap<T>{y + n * ys.n + grp * Kg * ys.c, ys.c, ys.h, ys.w, g.OH, g.OW, pg.Wq}, Kg,
                      g.OH * pg.Wq});
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
  if (depthwise_handles<T>(g, layout)) return depthwise_grad_input(g, layout, gy, w, gx);
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
  const DirectKernel<T>& kern = choose_direct_kernel(conv_kernels<T>(), Cg, max_rows * Wq);
  const PlaneGeom pg = make_plane_geom(Hq, Wq, Lh, Lw, 1, 1, kern.P);
  // Entries (k, tap), taps in reverse so that consecutive entries read ascending
  // addresses within a channel, as in the forward.
  std::vector<std::vector<Entry>> ent(phases.size());
  for (std::size_t f = 0; f < phases.size(); ++f)
    for (std::int64_t k = 0; k < Kg; ++k)
      for (auto i = phases[f].i.rbegin(); i != phases[f].i.rend(); ++i)
        for (auto j = phases[f].j.rbegin(); j != phases[f].j.rend(); ++j)
          ent[f].push_back({k * pg.size - (*i * g.dh / g.sh) * Wq - *j * g.dw / g.sw, k * Cg * taps + *i * g.kw + *j});

  Workspace ws;
  const auto planes_at = ws.add<T>(g.N * g.K * pg.size);
  ws.allocate();
  const T* planes = pack_all_planes(gy, layout, g.N, g.K, g.OH, g.OW, pg, ws.at<T>(planes_at));

  const ActStrides xs = act_strides(layout, g.C, g.H, g.W);
  std::vector<DirectJob<T>> jobs;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t grp = 0; grp < g.groups; ++grp)
      for (std::size_t f = 0; f < phases.size(); ++f) {
        const Phase& ph = phases[f];
        T* out = gx + n * xs.n + grp * Cg * xs.c + (ph.qh0 * g.sh + ph.ra - g.pt) * xs.h +
                 (ph.qw0 * g.sw + ph.rb - g.pl) * xs.w;
        jobs.push_back({planes + (n * g.K + grp * Kg) * pg.size + (ph.qh0 + Lh) * Wq + ph.qw0 + Lw, ent[f].data(),
                        static_cast<std::int64_t>(ent[f].size()), w + grp * Kg * Cg * taps, taps, nullptr,
                        OutMap<T>{out, xs.c, g.sh * xs.h, g.sw * xs.w, ph.rows, ph.cols, Wq}, Cg, ph.rows * Wq});
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
  if (depthwise_handles<T>(g, layout)) return depthwise_grad_weight(g, layout, gy, x, gw);
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), E = Cg * g.kh * g.kw, OHW = g.OH * g.OW;
  if (g.N == 0) {
    std::fill(gw, gw + g.K * E, T(0));
    return;
  }
  const GwKernel<T>& kern = cheapest(conv_kernels<T>().gw, forced_conv_kernel(true), Kg,
                                     [](const auto& k) { return k.KB; }, E, [](const auto& k) { return k.R; });
  const std::int64_t R = kern.R, KB = kern.KB, nkb = ceil_div(Kg, KB), neb = ceil_div(E, R);
  const PlaneGeom pg = input_planes(g, 0);
  std::vector<std::int64_t> off;
  for (const Entry& e : forward_entries(g, pg)) off.push_back(e.x);
  off.resize(static_cast<std::size_t>(neb * R), off.back());  // padding entries: re-read the last, discarded

  // Tasks: (batch slice, group, channel block, chunk of entry blocks). The slices and
  // chunks depend on the shape only (the batch split changes the summation order).
  const double flops = 2.0 * double(g.N * OHW) * double(g.groups * nkb * KB) * double(neb * R);
  const std::int64_t want = std::clamp<std::int64_t>(static_cast<std::int64_t>(flops / kMinTaskFlops), 1, 16);
  const std::int64_t blocks = g.groups * nkb;
  const std::int64_t nec = std::clamp<std::int64_t>(ceil_div(want, blocks), 1, neb);
  const std::int64_t eb_per_chunk = ceil_div(neb, nec);
  const std::int64_t nslices = std::clamp<std::int64_t>(ceil_div(want, blocks * nec), 1, g.N);
  const std::int64_t n_per_slice = ceil_div(g.N, nslices);
  const std::int64_t acc_slice = g.groups * neb * nkb * R * KB;

  Workspace ws;
  const auto planes_at = ws.add<T>(g.N * g.C * pg.channel_size());
  const auto gyp_at = ws.add<T>(g.groups * nkb * g.N * OHW * KB);
  const auto acc_at = ws.add<T>(nslices * acc_slice);
  ws.allocate();
  T *gyp = ws.at<T>(gyp_at), *acc = ws.at<T>(acc_at);
  const T* planes = pack_all_planes(x, layout, g.N, g.C, g.H, g.W, pg, ws.at<T>(planes_at));
  const ActStrides gys = act_strides(layout, g.K, g.OH, g.OW);

  // gy packed per (group, channel block, image): [pixel][KB channels], zeros past Kg.
  parallel_ranges(g.groups * nkb * g.N, (1 << 16) / (OHW * KB) , [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) {
      const std::int64_t n = i % g.N, kb = (i / g.N) % nkb, grp = i / (g.N * nkb);
      T* dst = gyp + i * OHW * KB;
      for (std::int64_t kk = 0; kk < KB; ++kk) {
        const std::int64_t k = kb * KB + kk;
        if (k >= Kg) {
          for (std::int64_t p = 0; p < OHW; ++p) dst[p * KB + kk] = T(0);
          continue;
        }
        const T* src = gy + n * gys.n + (grp * Kg + k) * gys.c;
        for (std::int64_t oh = 0, p = 0; oh < g.OH; ++oh)
          for (std::int64_t ow = 0; ow < g.OW; ++ow, ++p) dst[p * KB + kk] = src[oh * gys.h + ow * gys.w];
      }
    }
  });

  // A chunk of output rows whose packed gy (<= 32 KiB) stays in L1 across entry blocks.
  const std::int64_t chunk_rows = std::max<std::int64_t>(1, (8192 / KB) / g.OW);
  parallel_for(nslices * blocks * nec, [&](std::int64_t task) {
    const std::int64_t ec = task % nec, blk = (task / nec) % blocks, slice = task / (nec * blocks);
    const std::int64_t grp = blk / nkb, kb = blk % nkb;
    const std::int64_t eb0 = ec * eb_per_chunk, eb1 = std::min(neb, eb0 + eb_per_chunk);
    T* acc_blk = acc + slice * acc_slice + (grp * neb * nkb) * R * KB;
    for (std::int64_t eb = eb0; eb < eb1; ++eb) std::fill_n(acc_blk + (eb * nkb + kb) * R * KB, R * KB, T(0));
    const std::int64_t n1 = std::min(g.N, (slice + 1) * n_per_slice);
    for (std::int64_t n = slice * n_per_slice; n < n1; ++n) {
      const T* gyn = gyp + ((grp * nkb + kb) * g.N + n) * OHW * KB;
      const T* xn = planes + (n * g.C + grp * Cg) * pg.channel_size();
      for (std::int64_t oh0 = 0; oh0 < g.OH; oh0 += chunk_rows) {
        const std::int64_t rows = std::min(chunk_rows, g.OH - oh0);
        for (std::int64_t eb = eb0; eb < eb1; ++eb)
          kern.fn(GwTile<T>{gyn + oh0 * g.OW * KB, xn + oh0 * pg.Wq, off.data() + eb * R, rows, g.OW, pg.Wq,
                            acc_blk + (eb * nkb + kb) * R * KB});
      }
    }
  });

  // gw[k][e] = sum over slices, in order, of acc[slice][grp][eb][kb][r][kk], block by
  // block: each (eb, kb) block of R x KB sums is read once and written as KB runs of R.
  parallel_ranges(g.groups * neb * nkb, (1 << 14) / (R * KB), [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t kb = b % nkb, eb = (b / nkb) % neb, grp = b / (nkb * neb);
      const T* blk = acc + b * R * KB;
      const std::int64_t kk1 = std::min(KB, Kg - kb * KB), r1 = std::min(R, E - eb * R);
      for (std::int64_t kk = 0; kk < kk1; ++kk) {
        T* dst = gw + (grp * Kg + kb * KB + kk) * E + eb * R;
        for (std::int64_t r = 0; r < r1; ++r) {
          T s = blk[r * KB + kk];
          for (std::int64_t slice = 1; slice < nslices; ++slice) s += blk[slice * acc_slice + r * KB + kk];
          dst[r] = s;
        }
      }
    }
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
