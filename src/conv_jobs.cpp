#include "conv_jobs.h"

#include <algorithm>

#include "thread_pool.h"

namespace convkit {
std::vector<Band> row_bands(const std::vector<Entry>& ent, const std::vector<RowRange>& valid, std::int64_t rows,
                            std::int64_t Wq, std::int64_t P) {
  auto tile_passes = [&](std::int64_t band_rows, std::size_t entries) {
    return double(ceil_div(band_rows * Wq, P)) * double(entries);
  };
  std::vector<std::int64_t> cuts{0, rows};
  for (const RowRange& v : valid)
    for (std::int64_t r : {v.lo, v.hi})
      if (r > 0 && r < rows && v.lo < v.hi) cuts.push_back(r);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<Band> bands;
  Band whole{0, rows, {}};
  double split_cost = 0;
  for (std::size_t b = 0; b + 1 < cuts.size(); ++b) {
    Band band{cuts[b], cuts[b + 1], {}};
    for (std::size_t e = 0; e < ent.size(); ++e)
      if (valid[e].lo <= band.r0 && valid[e].hi >= band.r1) band.ent.push_back(ent[e]);
    split_cost += tile_passes(band.r1 - band.r0, band.ent.size());
    bands.push_back(std::move(band));
  }
  for (std::size_t e = 0; e < ent.size(); ++e)
    if (valid[e].lo < std::min(valid[e].hi, rows) && valid[e].hi > 0) whole.ent.push_back(ent[e]);
  if (split_cost < tile_passes(rows, whole.ent.size())) return bands;
  return {std::move(whole)};
}

template <typename T>
void run_direct_jobs(const DirectKernel<T>& kern, const std::vector<DirectJob<T>>& jobs, bool relu) {
  const std::int64_t R = kern.R, P = kern.P;
  // Pixel tiles are numbered across jobs; tile_bytes: the most input one tile reads
  // (its job's span of entry offsets, shared out over its tiles).
  std::vector<std::int64_t> first_tile(jobs.size() + 1, 0);
  std::int64_t nkb = 1;
  double flops = 0, tile_bytes = 1, weight_bytes = 0;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const DirectJob<T>& job = jobs[j];
    const std::int64_t tiles = ceil_div(job.npix, P), blocks = ceil_div(job.nk, R);
    first_tile[j + 1] = first_tile[j] + tiles;
    nkb = std::max(nkb, blocks);
    flops += 2.0 * double(job.n) * double(R * P) * double(tiles * blocks);
    if (job.n == 0 || tiles == 0) continue;
    const auto [lo, hi] = std::minmax_element(job.ent, job.ent + job.n, [](const Entry& a, const Entry& b) {
      return a.x < b.x;
    });
    tile_bytes = std::max(tile_bytes, double(hi->x - lo->x + job.npix) * sizeof(T) / double(tiles));
    weight_bytes = std::max(weight_bytes, double(job.nk) * double(job.n) * sizeof(T));
  }
  const std::int64_t tiles = first_tile.back();
  if (tiles == 0) return;
  // Tasks are (group of pixel tiles, chunk of channel blocks), each running its blocks
  // one after the other over all the group's tiles. Weights larger than a 1 MiB L2 are
  // grouped: a block's weights (R rows of every entry: 72 KiB on a 256-channel 3x3
  // layer) are then read from L3 once per group, and from L1/L2 for its other tiles,
  // while the group's input (at most half of the L2) stays in L2; tile after tile, a
  // 14 x 14 layer read all its 2.4 MB of weights from L3 once per tile. Weights that fit
  // in L2 run tile after tile (groups of one): each tile's input stays in L1/L2 across
  // the blocks (VGG's 128-channel 112 x 112 layer ran 6% slower grouped). As many tasks
  // as keep every thread busy (8 per thread), none so small that handing it out costs
  // more than running it (tiny layers run in the caller, no thread wakes); groups
  // shrink when there are too few channel blocks.
  const std::int64_t max_tasks = std::max<std::int64_t>(1, static_cast<std::int64_t>(flops / kMinTaskFlops));
  const std::int64_t want = std::min<std::int64_t>(max_tasks, 8 * get_num_threads());
  const std::int64_t fit = weight_bytes <= 2 * kL2Share
                              ? ceil_div(tiles, std::min(tiles, max_tasks))
                              : std::clamp<std::int64_t>(std::min(static_cast<std::int64_t>(kL2Share / tile_bytes),
                                                                  ceil_div(tiles * nkb, want)),
                                                         1, tiles);
  const std::int64_t ngroups = ceil_div(tiles, fit), group = ceil_div(tiles, ngroups);  // groups of even size
  // Chunks of channel blocks differ in size by one at most, and the task count is a
  // multiple of the thread count where the blocks allow: Inception's 1x7 (7 tile groups,
  // 16 blocks) ran 21 tasks of 6, 6 and 4 blocks, 11 on one core and 10 on the other.
  const std::int64_t threads = get_num_threads();
  std::int64_t nchunks = std::clamp<std::int64_t>(ceil_div(want, ngroups), 1, nkb);
  while ((ngroups * nchunks) % threads != 0 && nchunks < nkb && ngroups * (nchunks + 1) <= max_tasks) ++nchunks;
  // No blocking of the entries (input channels) for cache: a tile's input streams from
  // L2 well within its bandwidth (a tap's loads mostly hit lines its neighbours brought
  // into L1), and carrying partial sums between entry blocks measured 2-15% slower.
  parallel_for(ngroups * nchunks, [&](std::int64_t task) {
    const std::int64_t t0 = task / nchunks * group, t1 = std::min(tiles, t0 + group);
    const std::int64_t kb0 = task % nchunks * nkb / nchunks, kb1 = (task % nchunks + 1) * nkb / nchunks;
    for (std::int64_t kb = kb0; kb < kb1; ++kb) {
      std::size_t j = static_cast<std::size_t>(std::upper_bound(first_tile.begin(), first_tile.end(), t0) -
                                               first_tile.begin() - 1);
      for (std::int64_t t = t0; t < t1; ++t) {
        while (t >= first_tile[j + 1]) ++j;
        const DirectJob<T>& job = jobs[j];
        if (kb * R >= job.nk) continue;
        const int kr = static_cast<int>(std::min(R, job.nk - kb * R));
        // A job's last tiles compute only the vectors its pixels need (span); read in
        // place (exact), the last is moved back to end at npix.
        std::int64_t p0;
        const int v = kern.span(t - first_tile[j], job.npix, p0);
        const std::int64_t width = v * kern.lanes();
        int skip = 0;
        if (job.exact && p0 + width > job.npix) {
          skip = static_cast<int>(p0 + width - job.npix);
          p0 = job.npix - width;
        }
        OutMap<T> out = job.out;
        out.base += kb * R * out.k_stride;
        kern.tile[v - 1](DirectTile<T>{job.in + p0, job.ent, job.n, job.w + kb * R * job.w_ld, job.w_ld,
                                       job.bias ? job.bias + kb * R : nullptr, relu, kr, skip, p0, out,
                                       job.prefetch_w});
      }
    }
  });
}

#define CONVKIT_INSTANTIATE(T)                                                                             \
  template void run_direct_jobs<T>(const DirectKernel<T>&, const std::vector<DirectJob<T>>&, bool);
CONVKIT_INSTANTIATE(float)
CONVKIT_INSTANTIATE(double)
#undef CONVKIT_INSTANTIATE

}  // namespace convkit
