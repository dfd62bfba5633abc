// Scheduling of the direct kernels: a job is one flat-domain correlation (see
// conv_planes.h) of all its output channels; it splits into pixel tiles x channel
// blocks, and those into pool tasks.
#pragma once
#include <cstdint>
#include <vector>

#include "conv_tile.h"

namespace convkit {

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Splitting a flat domain into bands of columns must save at least this share of its
// tile passes: narrow bands cost more than their passes count (rows of two pixels store
// in two-pixel pieces, each band packs its own windows). DeepLab's dilation-2 layer
// saves 1 pass in 69 by splitting off 2-column bands and ran 20% slower; ASPP's column
// bands save 17%. (Row bands keep full rows: any saving counts.)
constexpr double kSplitGain = 0.85;

template <typename T>
struct DirectJob {
  const T* in;               // input planes at flat pixel 0
  const Entry* ent;          // reduction entries
  std::int64_t n;            // number of entries
  const T* w;                // weights of output channel 0 (see DirectTile)
  std::int64_t w_ld;         // weight stride between output channels
  const T* bias;             // nk values or nullptr
  OutMap<T> out;             // at output channel 0
  std::int64_t nk;           // output channels
  std::int64_t npix;         // flat pixels
  // The input is the activation itself, not packed planes with slack: no tile may read
  // past npix, so the last tile is moved back to end there (npix >= P), overlapping
  // its neighbour, whose pixels it recomputes identically and does not store again.
  bool exact;
  // The weight rows are runs with page-sized gaps (grad-input's weights read in place),
  // which defeat the hardware prefetchers: the kernels prefetch them in software. Not
  // for sequential rows (the forward's), which it slowed by up to 4%.
  bool prefetch_w = false;
};

// A run of output rows [r0, r1) of a flat domain and the reduction entries that read
// real input (not only padding) somewhere in it.
struct Band {
  std::int64_t r0, r1;
  std::vector<Entry> ent;
};

// Output rows [lo, hi) where an entry reads real input; lo >= hi: nowhere (dropped).
struct RowRange {
  std::int64_t lo, hi;
};

// Splits rows [0, rows) into bands of constant valid entries when that costs fewer tile
// passes (P-pixel tiles x entries) than running every entry on every row; else one band
// with the entries valid somewhere. Large padding (DeepLab's ASPP, dilation 12) leaves
// a third of the taps reading zeros on a third of the rows: bands skip them. With the
// usual padding of 1, one-row bands would waste more on partial tiles than they save.
std::vector<Band> row_bands(const std::vector<Entry>& ent, const std::vector<RowRange>& valid, std::int64_t rows,
                            std::int64_t Wq, std::int64_t P);

// A core's L2 on the machines the blocking was measured on (AMD Zen 5).
constexpr std::int64_t kL2Bytes = std::int64_t(1) << 20;

// Input bytes a group of pixel tiles may read so that it stays in L2 while every
// channel block runs over it (run_direct_jobs): half of the L2.
constexpr double kL2Share = kL2Bytes / 2.0;

// Below this many FLOPs a task costs more to hand to another thread than to run.
constexpr double kMinTaskFlops = 4e5;

// The kernel of `ks` whose padded work (work(kernel): the multiply-adds it computes,
// tile edges included), divided by its measured efficiency, is least; or the one named
// `forced` (tests, see force_conv_kernels).
template <typename Kernel, typename Work>
const Kernel& cheapest(const std::vector<Kernel>& ks, const std::string& forced, Work work) {
  const Kernel* best = &ks.front();
  double best_cost = 0;
  for (const Kernel& k : ks) {
    if (!forced.empty() && forced == k.name) return k;
    const double cost = work(k) / k.eff;
    if (best_cost == 0 || cost < best_cost) best = &k, best_cost = cost;
  }
  return *best;
}

inline std::int64_t round_up(std::int64_t a, std::int64_t b) { return ceil_div(a, b) * b; }

// The direct kernel for nk output channels x npix flat pixels, its weights read in
// sequence or in place (w_in_place: rated by DirectKernel::eff_w_in_place).
template <typename T>
const DirectKernel<T>& choose_direct_kernel(const ConvKernels<T>& ks, std::int64_t nk, std::int64_t npix,
                                            bool w_in_place = false) {
  return cheapest(ks.direct, forced_conv_kernel(false), [&](const DirectKernel<T>& k) {
    return double(round_up(nk, k.R)) * double(k.padded(npix)) * (w_in_place ? k.eff / k.eff_w_in_place : 1.0);
  });
}

// Runs every (job, pixel tile, channel block) on the pool. The split into tasks never
// changes a result: each output element is computed by exactly one kernel call.
template <typename T>
void run_direct_jobs(const DirectKernel<T>& kern, const std::vector<DirectJob<T>>& jobs, bool relu);

}  // namespace convkit
