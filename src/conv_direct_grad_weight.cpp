// The direct engine's grad-weight: outer products of packed grad_output with the
// input's planes.
#include <vector>

#include "conv_direct_planes.h"
#include "workspace.h"

namespace convkit {

// Grad-weight: gw[k, c, t] = sum over images n and output pixels p of
// gy[n, k, p] * planes[n, c][p + off(t)]. Each task owns a block of KB output channels x
// a range of R-entry blocks (x a fixed slice of the batch when the rest gives too few
// tasks) and sums in a fixed order, so results do not depend on the thread count; the
// batch slices are added in order at the end. No atomics.
template <typename T>
void direct_grad_weight(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw) {
  const std::int64_t Cg = g.Cg(), Kg = g.Kg(), E = Cg * g.kh * g.kw, OHW = g.OH * g.OW;
  if (g.N == 0) {
    std::fill(gw, gw + g.K * E, T(0));
    return;
  }
  const ConvKernels<T>& ks = conv_kernels<T>();
  const GwKernel<T>& kern = cheapest(ks.gw, forced_conv_kernel(true), [&](const GwKernel<T>& k) {
    return double(round_up(Kg, k.KB)) * double(round_up(E, k.R));
  });
  const std::int64_t R = kern.R, KB = kern.KB, nkb = ceil_div(Kg, KB), neb = ceil_div(E, R);
  const InputPlanes ip = stride_phase_planes(g, 0);  // reads only real output pixels: never folded
  const PlaneGeom& pg = ip.bands[0].pg;
  // Entries in one of two orders. Tap-major, (tap, c): a block of R entries mostly
  // shares one tap and with it the output pixels where that tap reads real input, and
  // the block's kernel calls run over that box only (ASPP's dilation-12 taps read zeros
  // on 40% of the pixels). Channel-major, (c, tap), gw's own order: a block's box spans
  // its taps' boxes (the padding read as zeros). Either way each entry sums into its
  // row of gw's order (`at`), so the sums transpose straight into gw. (Tap-major sums
  // in entry order cost a permute of gw afterwards, a 9-row transpose done element by
  // element: 6% of ASPP's grad-weight; the choice below charged it 60 MACs an element.)
  // Padding entries at the end re-read the last one and sum into rows past E, discarded.
  const std::int64_t taps = g.kh * g.kw;
  std::vector<std::int64_t> off(static_cast<std::size_t>(neb * R)), at(off.size());
  std::vector<std::int64_t> box(static_cast<std::size_t>(neb * 4));  // rows [0], [1), cols [2], [3) per block
  struct Tap {
    std::int64_t off, r0, r1, c0, c1;  // offset in a channel's planes; output rows and cols reading real input
  };
  std::vector<Tap> tap(static_cast<std::size_t>(taps));
  for (std::int64_t t = 0; t < taps; ++t) {
    Tap& tp = tap[t];
    tp.off = ip.offset_of(ip.bands[0], t / g.kw * g.dh, t % g.kw);
    tap_range(g.H, g.sh, g.pt, t / g.kw * g.dh, g.OH, tp.r0, tp.r1);
    tap_range(g.W, g.sw, g.pl, t % g.kw * g.dw, g.OW, tp.c0, tp.c1);
  }
  auto order = [&](bool tap_major) {  // fills off and box; returns the pixels the blocks' calls cover
    double pixels = 0;
    std::int64_t t = 0, c = 0;  // entry min(e, E - 1)'s tap and channel, counted up (no divisions)
    for (std::int64_t eb = 0, e = 0; eb < neb; ++eb) {
      std::int64_t* b = &box[eb * 4];
      for (std::int64_t r = 0; r < R; ++r, ++e) {
        const Tap& tp = tap[t];
        off[e] = c * ip.cs + tp.off;
        at[e] = e < E ? c * taps + t : e;
        if (r == 0 || b[0] >= b[1] || b[2] >= b[3]) b[0] = tp.r0, b[1] = tp.r1, b[2] = tp.c0, b[3] = tp.c1;
        if (tp.r0 < tp.r1 && tp.c0 < tp.c1)
          b[0] = std::min(b[0], tp.r0), b[1] = std::max(b[1], tp.r1), b[2] = std::min(b[2], tp.c0),
          b[3] = std::max(b[3], tp.c1);
        if (e + 1 >= E) continue;
        if (tap_major && ++c == Cg) c = 0, ++t;
        if (!tap_major && ++t == taps) t = 0, ++c;
      }
      if (b[0] < b[1] && b[2] < b[3]) pixels += double((b[1] - b[0]) * (b[3] - b[2]));
    }
    return pixels;
  };
  const bool tap_major = taps > 1 && Cg > 1 &&  // else the orders are the same
                         order(true) < order(false);
  order(tap_major);

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
  const auto planes_at = ws.add<T>(buffer_size({g.N, g.C, pg.channel_size()}));
  const auto gyp_at = ws.add<T>(blocks * g.N * OHW * KB);
  const auto acc_at = ws.add<T>(nslices * acc_slice);
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
    for (std::int64_t e = eb0 * R; e < eb1 * R; ++e) std::fill_n(acc_blk + at[e] * KB, KB, T(0));
    const std::int64_t n1 = std::min(g.N, (slice + 1) * n_per_slice);
    for (std::int64_t n = slice * n_per_slice; n < n1; ++n) {
      const T* gyn = gyp + (blk * g.N + n) * OHW * KB;
      const T* xn = planes + (n * g.C + grp * Cg) * pg.channel_size();
      for (std::int64_t oh0 = 0; oh0 < g.OH; oh0 += chunk_rows) {
        for (std::int64_t eb = eb0; eb < eb1; ++eb) {
          const std::int64_t* b = &box[eb * 4];
          const std::int64_t r0 = std::max(oh0, b[0]), r1 = std::min(oh0 + chunk_rows, b[1]);
          if (r0 >= r1 || b[2] >= b[3]) continue;
          kern.fn(GwTile<T>{gyn + (r0 * g.OW + b[2]) * KB, xn + r0 * pg.Wq + b[2], off.data() + eb * R,
                            at.data() + eb * R, r1 - r0, b[3] - b[2], g.OW * KB, pg.Wq, acc_blk});
        }
      }
    }
  });

  // gw = the slices' sums added in order, each block transposed (acc rows are in gw's
  // order).
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
    ks.transpose(sum, KB, gw + ((blk / nkb) * Kg + kb * KB) * E + e0, E, e1 - e0, kk1);
  });
}

template void direct_grad_weight<float>(const ConvGeom&, Layout, const float*, const float*, float*);
template void direct_grad_weight<double>(const ConvGeom&, Layout, const double*, const double*, double*);

}  // namespace convkit
