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
  // Units are (pixel tile, chunk of channel blocks), tile-major, numbered across jobs.
  std::vector<std::int64_t> first_tile(jobs.size() + 1, 0);
  std::int64_t nkb = 1;
  double flops = 0;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const std::int64_t tiles = ceil_div(jobs[j].npix, P), blocks = ceil_div(jobs[j].nk, R);
    first_tile[j + 1] = first_tile[j] + tiles;
    nkb = std::max(nkb, blocks);
    flops += 2.0 * double(jobs[j].n) * double(R * P) * double(tiles * blocks);
  }
  const std::int64_t tiles = first_tile.back();
  if (tiles == 0) return;
  // As many tasks as keep every thread busy, none so small that handing it out costs
  // more than running it (tiny layers run in the caller, no thread wakes). Channel
  // blocks are split only when there are too few pixel tiles (batch 1, small images).
  const std::int64_t max_tasks = std::max<std::int64_t>(1, static_cast<std::int64_t>(flops / kMinTaskFlops));
  const std::int64_t want = std::min<std::int64_t>(max_tasks, 8 * get_num_threads());
  const std::int64_t nkc = std::clamp<std::int64_t>(ceil_div(want, tiles), 1, nkb);
  const std::int64_t kb_per_chunk = ceil_div(nkb, nkc);
  const std::int64_t units = tiles * nkc;
  const std::int64_t per_task = ceil_div(units, std::min(units, max_tasks));
  // No blocking of the entries (input channels) for cache: a tile's input streams from
  // L2 well within its bandwidth (a tap's loads mostly hit lines its neighbours brought
  // into L1), and carrying partial sums between entry blocks measured 2-15% slower.
  parallel_for(ceil_div(units, per_task), [&](std::int64_t task) {
    const std::int64_t u1 = std::min(units, (task + 1) * per_task);
    std::size_t j = 0;
    for (std::int64_t u = task * per_task; u < u1; ++u) {
      const std::int64_t t = u / nkc, chunk = u % nkc;
      while (t >= first_tile[j + 1]) ++j;
      const DirectJob<T>& job = jobs[j];
      // The last tile of a job computes only the vectors its pixels need; read in place
      // (exact), it is moved back to end at npix.
      std::int64_t p0 = (t - first_tile[j]) * P;
      const int v = kern.vectors_at(p0, job.npix);
      const std::int64_t width = v * kern.lanes();
      int skip = 0;
      if (job.exact && p0 + width > job.npix) {
        skip = static_cast<int>(p0 + width - job.npix);
        p0 = job.npix - width;
      }
      const std::int64_t kb1 = std::min(ceil_div(job.nk, R), (chunk + 1) * kb_per_chunk);
      for (std::int64_t kb = chunk * kb_per_chunk; kb < kb1; ++kb) {
        OutMap<T> out = job.out;
        out.base += kb * R * out.k_stride;
        const DirectTile<T> tile{job.in + p0, job.ent, job.n, job.w + kb * R * job.w_ld, job.w_ld,
                                 job.bias ? job.bias + kb * R : nullptr, relu,
                                 static_cast<int>(std::min(R, job.nk - kb * R)), skip, p0, out};
        kern.tile[v - 1](tile);
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
