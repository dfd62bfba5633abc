// How the depthwise operators (conv_depthwise*.cpp) split a call into units of work (an
// image or plane, or a block of its rows), run them on the pool, and give each a
// per-thread scratch buffer.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "conv_geometry.h"
#include "thread_pool.h"

namespace convkit {
namespace depthwise {

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Per-thread scratch of n floats at a cache-line boundary (NHWC rows of 16k channels are
// then read as aligned vectors, never split over two lines), grown when needed and reused
// across units and calls: no allocation in the hot loop. Units never read what an earlier
// unit left (they pack first).
inline float* scratch(std::int64_t n) {
  thread_local std::vector<float> buf;
  const std::size_t want = static_cast<std::size_t>(n) + 16;
  if (buf.size() < want) buf.resize(want);
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(buf.data());
  return buf.data() + ((64 - at % 64) % 64) / sizeof(float);
}

// Outputs larger than this, on more than one thread, go out with streaming stores: a
// unit's rows are written to the thread's scratch first and then copied out whole
// (DwKernels::stream_copy). Plain stores read each line of an array that large from
// memory before writing it (and it would not stay in the caches for its reader anyway);
// with every core streaming, memory bandwidth is the limit. MobileNet's 3x3 depthwise
// at batch 8 (14 MB arrays), 2 threads: stride-2 backward 1.40x faster, stride-1
// forward 1.34x, backward 1.19x; one thread: 0.93x, 0.86x, 1.04x (memory keeps up with
// one core, and the copy is extra work); stride 2 at batch 1 (a 1.8 MB grad-input,
// which stays in the L3), streamed at 2 threads: 1.5x slower.
constexpr std::int64_t kStreamBytes = std::int64_t(8) << 20;

inline bool stream_output(std::int64_t floats) {
  return floats * static_cast<std::int64_t>(sizeof(float)) > kStreamBytes && get_num_threads() > 1;
}

// Runs write(rows) for a unit's n consecutive output floats at out: in place, or through
// scratch and stream_copy when `stream`.
template <typename Kernels, typename Write>
void write_unit(const Kernels& kern, bool stream, float* out, std::int64_t n, const Write& write) {
  if (!stream) return write(out);
  float* rows = scratch(n);
  write(rows);
  kern.stream_copy(out, rows, n);
}

// Rows are split into blocks when there are too few planes (or images) to keep both cores
// busy (16 tasks balance well on the pool's shared counter), or when a block's packed
// input would exceed `max_bytes` (what stays in L2 between packing and computing).
// Blocks re-pack the (kh-1)*dh rows they share with their neighbour, so they keep at
// least 8 rows. The split depends on the shape only, never on the thread count, and
// blocks never share an output.
constexpr std::int64_t kMinTasks = 16;
constexpr std::int64_t kMinBlockRows = 8;

struct Blocks {
  std::int64_t rows, count;  // `count` blocks of `rows` rows; the last may be shorter
  std::int64_t rows_of(std::int64_t b, std::int64_t total) const { return std::min(rows, total - b * rows); }
};

inline Blocks row_blocks(std::int64_t total, std::int64_t planes, std::int64_t bytes_per_row, std::int64_t max_bytes) {
  // planes is N*C, 0 for an empty batch (which then has no units to run)
  const std::int64_t want = std::max(ceil_div(kMinTasks, std::max<std::int64_t>(planes, 1)),
                                     ceil_div(total * bytes_per_row, max_bytes));
  const std::int64_t rows = std::max(ceil_div(total, want), std::min(total, kMinBlockRows));
  return {rows, ceil_div(total, rows)};
}

// Runs fn(unit) for every unit of work in [0, units), in tasks of consecutive units with
// at least kMinTaskWork multiply-adds each: waking the pool's threads costs a few
// microseconds, so tiny layers run as one task in the caller. Units, not threads, fix
// what each fn call computes, so results never depend on the grouping.
constexpr std::int64_t kMinTaskWork = 1 << 15;

template <typename Fn>
void parallel_units(std::int64_t units, std::int64_t work_per_unit, const Fn& fn) {
  const std::int64_t grain = std::max<std::int64_t>(1, kMinTaskWork / std::max<std::int64_t>(1, work_per_unit));
  parallel_for(ceil_div(units, grain), [&](std::int64_t task) {
    for (std::int64_t u = task * grain; u < std::min(units, (task + 1) * grain); ++u) fn(u);
  });
}

// Grad-input's stride phases. Padded input row ih + pt = q*sh + a receives gy[q - u] * w[i]
// from every tap row i with i*dh = a + u*sh (u >= 0): per phase (a, b) of (row, column) a
// stride-1 correlation of gy with that phase's taps. gy is read with U rows and V columns
// of zeros in front (U, V the largest u, v), so every tap reads forward, at (U - u, V - v).
struct PhaseRange {
  std::int64_t lo, hi;
};

struct GradInputPhases {
  std::int64_t U, V;
  std::vector<PhaseRange> rows, cols;  // per phase: the q (r) with q*s + phase - pad in the image
  PhaseRange all_rows, all_cols;       // their union
};

inline GradInputPhases grad_input_phases(const ConvGeom& g) {
  auto range = [](std::int64_t size, std::int64_t pad, std::int64_t s, std::int64_t phase) {
    const std::int64_t lo = pad > phase ? ceil_div(pad - phase, s) : 0, last = pad + size - 1 - phase;
    return PhaseRange{lo, std::max(lo, last >= 0 ? last / s + 1 : 0)};
  };
  GradInputPhases ph{(g.kh - 1) * g.dh / g.sh, (g.kw - 1) * g.dw / g.sw, {}, {}, {}, {}};
  for (std::int64_t a = 0; a < g.sh; ++a) ph.rows.push_back(range(g.H, g.pt, g.sh, a));
  for (std::int64_t b = 0; b < g.sw; ++b) ph.cols.push_back(range(g.W, g.pl, g.sw, b));
  auto all = [](const std::vector<PhaseRange>& v) {
    PhaseRange r = v[0];
    for (const PhaseRange& p : v) r = {std::min(r.lo, p.lo), std::max(r.hi, p.hi)};
    return r;
  };
  ph.all_rows = all(ph.rows);
  ph.all_cols = all(ph.cols);
  return ph;
}

}  // namespace depthwise
}  // namespace convkit
