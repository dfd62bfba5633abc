#include "pool.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "pool_kernel_table.h"
#include "thread_pool.h"

namespace convkit {
namespace {

template <typename T>
const PoolKernels<T>& kernels_for(const PoolGeom& g);

template <>
const PoolKernels<double>& kernels_for(const PoolGeom&) {
  return f64_pool_kernels__scalar;
}

template <>
const PoolKernels<float>& kernels_for(const PoolGeom& g) {
  // The SIMD kernels carry indices in int32 lanes: planes of 2^31 elements go scalar.
  if (g.H * g.W < (std::int64_t(1) << 31)) {
#ifdef CONVKIT_X86
    switch (active_isa()) {
      case Isa::avx512: return f32_pool_kernels__avx512;
      case Isa::avx2: return f32_pool_kernels__avx2;
      default: break;
    }
#endif
  }
  return f32_pool_kernels__scalar;
}

// A task reads about this much input: enough that the pool's cost per task (an atomic
// increment, an indirect call) is noise, little enough that 2 cores balance on one image.
// Task boundaries depend on the geometry only, never on the thread count.
constexpr std::int64_t kTaskBytes = 64 << 10;
// NHWC channel block: a multiple of every vector width, so blocks never split a vector.
constexpr std::int64_t kChannelBlock = 256;

std::int64_t items_per_task(std::int64_t bytes_per_item) {
  return std::max<std::int64_t>(1, kTaskBytes / std::max<std::int64_t>(1, bytes_per_item));
}

// Runs a kernel over `rows` rows (output rows forward, input rows backward) of every
// plane (NCHW) or image x channel block (NHWC). A unit of work is a band of rows of one
// plane (or block) holding about kTaskBytes of input; when a whole plane is smaller, a
// task takes a run of whole planes instead, so small planes do not become tiny tasks.
template <typename T>
void run_windows(const PoolGeom& g, PoolLayout layout, PoolKernel<T> kernel, const PoolArrays<T>& a,
                 std::int64_t rows, std::int64_t in_rows_per_row) {
  const bool nhwc = layout == PoolLayout::nhwc;
  const std::int64_t cb = nhwc ? std::min(g.C, kChannelBlock) : 1, blocks = nhwc ? ceil_div(g.C, cb) : 1;
  const std::int64_t planes = nhwc ? g.N : g.N * g.C;
  const std::int64_t row_bytes = in_rows_per_row * g.W * cb * std::int64_t(sizeof(T));
  const std::int64_t band = std::min(rows, items_per_task(row_bytes)), bands = ceil_div(rows, band);
  const std::int64_t units = planes * bands * blocks, per = bands == 1 ? items_per_task(rows * row_bytes) : 1;
  parallel_for(ceil_div(units, per), [&](std::int64_t task) {
    for (std::int64_t i = task * per; i < std::min(units, (task + 1) * per); ++i) {
      const std::int64_t block = i % blocks, b = i / blocks % bands, plane = i / blocks / bands;
      kernel(g, a, {plane, b * band, std::min(rows, (b + 1) * band), block * cb, std::min(g.C, (block + 1) * cb)});
    }
  });
}

// Global pooling, NCHW: a task is a run of whole planes.
template <typename T>
void run_planes(const PoolGeom& g, PoolKernel<T> kernel, const PoolArrays<T>& a) {
  const std::int64_t planes = g.N * g.C, per = items_per_task(g.H * g.W * std::int64_t(sizeof(T)));
  parallel_for(ceil_div(planes, per), [&](std::int64_t i) {
    kernel(g, a, {0, i * per, std::min(planes, (i + 1) * per), 0, 0});
  });
}

// What average pooling precomputes once a call (the kernels would otherwise divide per
// row or per pixel): 1/divisor factored per output row and column (torch's rules, see
// avg_divisor; divisor_override goes wholly into the column factors), and for the
// backward the outputs covering each input row and column.
template <typename T>
struct AvgTables {
  std::vector<T> inv_h, inv_w;
  std::vector<Range> cover_h, cover_w;
  explicit AvgTables(const PoolGeom& g) : inv_h(g.OH), inv_w(g.OW), cover_h(g.H), cover_w(g.W) {
    for (std::int64_t oh = 0; oh < g.OH; ++oh)
      inv_h[oh] = g.divisor_override ? T(1) : T(1.0 / double(avg_divisor(oh, g.H, g.kh, g.sh, g.ph, g.count_include_pad)));
    for (std::int64_t ow = 0; ow < g.OW; ++ow)
      inv_w[ow] = T(1.0 / double(g.divisor_override ? g.divisor_override
                                                    : avg_divisor(ow, g.W, g.kw, g.sw, g.pw, g.count_include_pad)));
    for (std::int64_t ih = 0; ih < g.H; ++ih) cover_h[ih] = covering_outputs(ih, g.kh, g.sh, g.ph, g.OH);
    for (std::int64_t iw = 0; iw < g.W; ++iw) cover_w[iw] = covering_outputs(iw, g.kw, g.sw, g.pw, g.OW);
  }
  PoolArrays<T> arrays(const T* in, T* out) const {
    return {in, out, nullptr, inv_h.data(), inv_w.data(), cover_h.data(), cover_w.data()};
  }
};

// Max backward: grad_output scattered by index into zeroed grad_input. A task owns a run
// of whole planes (NCHW, about kTaskBytes) or one image's block of channels (NHWC), small
// enough to stay in cache between the zeroing and the scatter: no races, one write to
// memory. False if an index is >= H*W or < -1 (-1: a window without input, as the
// reference's; any other value is a caller's bug, refused as the reference refuses it).
//
// Overlapping windows often share their maximum, and an update that reloads what the
// previous one is still storing makes the CPU replay it. So each output row goes in
// `phases` passes, each taking every phases-th column: windows that far apart are
// disjoint (any index is still right, only slower).
//
// A plane's indices are first checked in one branch-free pass (in order, from cache
// afterwards); a plane that passes is scattered without a check or branch an update
// (15% less time on ResNet's 3x3 stride 2, whose plane is 3136 updates); only a plane
// with a -1 or a bad index takes the checked loop.
template <typename T>
bool scatter_planes(const PoolGeom& g, const T* gy, const std::int64_t* idx, T* dst, std::int64_t n) {
  const std::int64_t hw = g.H * g.W, OW = g.OW, ohw = g.OH * OW, phases = ceil_div((g.kw - 1) * g.dw + 1, g.sw);
  const auto limit = static_cast<std::uint64_t>(hw);
  bool ok = true;
  std::memset(dst, 0, sizeof(T) * n * hw);
  for (std::int64_t p = 0; p < n; ++p, dst += hw, gy += ohw, idx += ohw) {
    bool in_range = true;
    for (std::int64_t o = 0; o < ohw; ++o) in_range &= static_cast<std::uint64_t>(idx[o]) < limit;
    auto scatter = [&, dst, gy, idx](auto checked) {
      for (std::int64_t row = 0; row < ohw; row += OW) {
        for (std::int64_t phase = 0; phase < phases; ++phase) {
          for (std::int64_t o = row + phase; o < row + OW; o += phases) {
            if constexpr (!decltype(checked)::value) {
              dst[idx[o]] += gy[o];
            } else {
              if (static_cast<std::uint64_t>(idx[o]) < limit) dst[idx[o]] += gy[o];
              else ok = ok && idx[o] == -1;
            }
          }
        }
      }
    };
    if (in_range) scatter(std::false_type{});
    else scatter(std::true_type{});
  }
  return ok;
}

template <typename T>
bool scatter_nchw(const PoolGeom& g, const T* gy, const std::int64_t* idx, T* gx) {
  const std::int64_t hw = g.H * g.W, ohw = g.OH * g.OW, planes = g.N * g.C;
  const std::int64_t per = items_per_task(hw * std::int64_t(sizeof(T)));
  std::atomic<bool> ok{true};
  parallel_for(ceil_div(planes, per), [&](std::int64_t task) {
    const std::int64_t p0 = task * per, n = std::min(planes - p0, per);
    if (!scatter_planes(g, gy + p0 * ohw, idx + p0 * ohw, gx + p0 * hw, n)) ok = false;
  });
  return ok;
}

template <typename T>
bool scatter_nhwc(const PoolGeom& g, const T* gy, const std::int64_t* idx, T* gx) {
  const std::int64_t hw = g.H * g.W, ohw = g.OH * g.OW, C = g.C;
  // Channels per unit: the unit's grad_input (hw pixels x cb channels) fits in ~512 KB.
  std::int64_t cb = std::max<std::int64_t>(16, (std::int64_t(512) << 10) / (hw * std::int64_t(sizeof(T))) / 16 * 16);
  cb = std::min(cb, C);
  // A task: a run of units (image, channel block) holding about kTaskBytes of grad_input,
  // so that a small call is one task and runs on the caller's thread, waking no one.
  const std::int64_t blocks = ceil_div(C, cb), units = g.N * blocks;
  const std::int64_t per = items_per_task(hw * cb * std::int64_t(sizeof(T)));
  std::atomic<bool> ok{true};
  parallel_for(ceil_div(units, per), [&](std::int64_t task) {
    bool task_ok = true;
    for (std::int64_t unit = task * per; unit < std::min(units, (task + 1) * per); ++unit) {
      const std::int64_t n = unit / blocks, c0 = unit % blocks * cb, c1 = std::min(C, c0 + cb);
      T* dst = gx + n * hw * C;
      const T* src = gy + n * ohw * C;
      const std::int64_t* at = idx + n * ohw * C;
      for (std::int64_t p = 0; p < hw; ++p) std::memset(dst + p * C + c0, 0, sizeof(T) * (c1 - c0));
      for (std::int64_t o = 0; o < ohw; ++o) {
        for (std::int64_t c = c0; c < c1; ++c) {
          const std::int64_t i = at[o * C + c];
          if (static_cast<std::uint64_t>(i) < static_cast<std::uint64_t>(hw)) dst[i * C + c] += src[o * C + c];
          else task_ok = task_ok && i == -1;
        }
      }
    }
    if (!task_ok) ok = false;
  });
  return ok;
}

// Maxout as max pooling: NCHW x is an NHWC tensor of N*G images of k x 1 pixels with H*W
// channels, pooled by a k x 1 window; NHWC x is one NCHW plane per image of H*W rows of
// C values, pooled by 1 x k windows at stride k.
struct MaxoutView {
  PoolGeom g;
  PoolLayout layout;
};

MaxoutView maxout_view(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t k,
                       PoolLayout layout) {
  if (k < 1 || C % k)
    throw std::invalid_argument("k must be a positive divisor of the channel count C = " + std::to_string(C) +
                                ", got k = " + std::to_string(k));
  PoolGeom g = layout == PoolLayout::nchw
                   ? PoolGeom{N * (C / k), H * W, k, 1, k, 1, k, 1, 0, 0, 1, 1, false, true, 0, 0, 0}
                   : PoolGeom{N, 1, H * W, C, 1, k, 1, k, 0, 0, 1, 1, false, true, 0, 0, 0};
  g.finalize();
  return {g, layout == PoolLayout::nchw ? PoolLayout::nhwc : PoolLayout::nchw};
}

}  // namespace

template <typename T>
void max_pool2d_forward(const PoolGeom& g, PoolLayout layout, const T* x, T* y, std::int64_t* idx) {
  const PoolKernels<T>& k = kernels_for<T>(g);
  const PoolArrays<T> a{x, y, idx, nullptr, nullptr, nullptr, nullptr};
  if (g.is_global() && layout == PoolLayout::nchw) return run_planes(g, idx ? k.global_max_nchw_idx : k.global_max_nchw, a);
  if (layout == PoolLayout::nchw) return run_windows(g, layout, idx ? k.max_nchw_idx : k.max_nchw, a, g.OH, g.sh);
  run_windows(g, layout, idx ? k.max_nhwc_idx : k.max_nhwc, a, g.OH, g.sh);
}

template <typename T>
void max_pool2d_backward(const PoolGeom& g, PoolLayout layout, const T* gy, const std::int64_t* idx, T* gx) {
  const bool ok = layout == PoolLayout::nchw ? scatter_nchw(g, gy, idx, gx) : scatter_nhwc(g, gy, idx, gx);
  if (!ok)
    throw std::invalid_argument("indices must be flat positions within each H*W plane, in [-1, " +
                                std::to_string(g.H * g.W) + ") (H = " + std::to_string(g.H) +
                                ", W = " + std::to_string(g.W) + ")");
}

template <typename T>
void avg_pool2d_forward(const PoolGeom& g, PoolLayout layout, const T* x, T* y) {
  const PoolKernels<T>& k = kernels_for<T>(g);
  const AvgTables<T> tables(g);
  const PoolArrays<T> a = tables.arrays(x, y);
  if (g.is_global() && layout == PoolLayout::nchw) return run_planes(g, k.global_avg_nchw, a);
  run_windows(g, layout, layout == PoolLayout::nchw ? k.avg_nchw : k.avg_nhwc, a, g.OH, g.sh);
}

template <typename T>
void avg_pool2d_backward(const PoolGeom& g, PoolLayout layout, const T* gy, T* gx) {
  const PoolKernels<T>& k = kernels_for<T>(g);
  const AvgTables<T> tables(g);
  if (g.is_global() && layout == PoolLayout::nchw) return run_planes(g, k.global_avg_backward_nchw, tables.arrays(gy, gx));
  run_windows(g, layout, layout == PoolLayout::nchw ? k.avg_backward_nchw : k.avg_backward_nhwc,
              tables.arrays(gy, gx), g.H, 1);
}

template <typename T>
void maxout2d_forward(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t k,
                      PoolLayout layout, const T* x, T* y) {
  const MaxoutView v = maxout_view(N, C, H, W, k, layout);
  max_pool2d_forward(v.g, v.layout, x, y, nullptr);
}

template <typename T>
void maxout2d_backward(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t k,
                       PoolLayout layout, const T* gy, const T* x, T* gx) {
  const MaxoutView v = maxout_view(N, C, H, W, k, layout);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(N * (C / k) * H * W));
  std::vector<T> y(idx.size());
  max_pool2d_forward(v.g, v.layout, x, y.data(), idx.data());
  max_pool2d_backward(v.g, v.layout, gy, idx.data(), gx);
}

#define CONVKIT_INSTANTIATE(T)                                                                                   \
  template void max_pool2d_forward<T>(const PoolGeom&, PoolLayout, const T*, T*, std::int64_t*);               \
  template void max_pool2d_backward<T>(const PoolGeom&, PoolLayout, const T*, const std::int64_t*, T*);        \
  template void avg_pool2d_forward<T>(const PoolGeom&, PoolLayout, const T*, T*);                              \
  template void avg_pool2d_backward<T>(const PoolGeom&, PoolLayout, const T*, T*);                             \
  template void maxout2d_forward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,       \
                                    PoolLayout, const T*, T*);                                                 \
  template void maxout2d_backward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,      \
                                     PoolLayout, const T*, const T*, T*);
CONVKIT_INSTANTIATE(float)
CONVKIT_INSTANTIATE(double)
#undef CONVKIT_INSTANTIATE

}  // namespace convkit
