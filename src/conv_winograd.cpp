// The Winograd F(4x4, 3x3) operators (see conv_winograd.h); grad-weight's F(3x3, 4x4) at
// the end of the file. Per call of the forward and the grad-input:
//   1. the input is made channels-last with the channel count padded to the vector
//      width W (NCHW is transposed; an NHWC input with C % W == 0 is read in place);
//   2. the tiles are processed in super-blocks of S tiles, each by one thread: input
//      transform V[p][s][c] (p < 36); then per block of KB output channels, the
//      block's weights transformed, U[p][c][k] = (G w[k][c] G^T)[p], and for each p
//      the product M[p] = V[p] U[p] through the direct engine's kernel (roles: its
//      "output channels" are tiles, its "pixels" the output channels k, its reduction
//      entries the input channels c), and the output transform of M into y with bias
//      and ReLU. S keeps V and M of a super-block within kBlockBytes, so they are
//      re-read from cache; a block's U (kUBytes) is read back from the caches the
//      transform just wrote it into. Weights seen before keep their transformed blocks
//      (see WeightCache). With fewer super-blocks than threads, the blocks of output
//      channels are split between the threads instead (see run).
// A tile's result does not depend on its super-block or its channel block (each
// product row is its own reduction, in the same order), so results do not depend on
// the thread count.
#include "conv_winograd.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "conv_jobs.h"
#include "conv_tile.h"
#include "thread_pool.h"
#include "workspace.h"

namespace convkit {
namespace {

// Super-block working set (transformed input and products): about a core's 1 MiB L2, so
// the transforms' output is re-read from L2 by the products and theirs by the output
// transform. Measured at one thread against 4 MiB (winograd / direct speed): ResNet 3x3
// 64 batch 8 1.28x -> 1.42x, DeepLab dilation 2 1.54x -> 1.72x, VGG 128 unchanged. Each
// super-block transforms the weights anew (2 / S of its products' work, or less).
constexpr std::int64_t kBlockBytes = std::int64_t(1) << 20;
// But at least this many tiles when the transformed weights (36 x C x K floats) exceed
// the L2: each super-block transforms all of them anew, or reads them back from L3 or
// memory when cached, and with C = K = 256 that outweighs V and M spilling to L3.
// DeepLab dilation 2 (81 tiles: 6 super-blocks of at most 16 tiles, now 2 of 41), 2
// threads, new weights at every call: forward 1.41x, backward 1.23x faster; the same
// weights again (cached): 1.09x, 1.14x. VGG's 128 channels within 2% either way.
constexpr std::int64_t kMinTilesLargeWeights = 48;

// Transformed weights of one output-channel block, at most this size (but at least P
// channels wide: C = 256 makes 1.8 MB): made by a task right before its products read
// them, so they are read back from the caches the transform wrote them into. Made all
// at once, the 36 x C x K floats (9.4 MB for C = K = 256) went to memory and back: a
// first call of ResNet 3x3 256 took 1.47x the direct engine's time (one thread), now
// 0.55x. Making a block of 6 positions at a time, to keep it in L2 for C = 256, repeats
// the transform's first pass 6 times and cost more than it saved (0.55x -> 0.62x).
constexpr std::int64_t kUBytes = std::int64_t(1) << 19;

// Grad-weight (see winograd_grad_weight): the transformed input and grad_output of all
// the tiles when within kGradWeightAllBytes, else of kGradWeightBytes of tiles at a time
// (a super-block). Each super-block reads and writes the sums, 36 x C x K floats, once
// more: DeepLab's 256 channels (9.4 MB of sums) take 2.6 ms in one super-block of 6 MB,
// 3.4 ms in two (one thread); VGG's 128 on 112 x 112 (29 MB, 2.4 MB of sums) 7.4 ms in
// blocks of 4 MB, 9.9 ms of 16 MB, 8.9 ms of 1 MB; ResNet's 64 at batch 8 (29 MB, 0.6 MB)
// 5.6 ms in blocks of 1 to 4 MB, 7.4 ms of 16. Tiles are transformed kChunk a task; a
// task's block of sums stays within kMBlockBytes; kMaxRows bounds the kernels' rows.
constexpr std::int64_t kGradWeightAllBytes = std::int64_t(8) << 20;
constexpr std::int64_t kGradWeightBytes = std::int64_t(4) << 20;
constexpr std::int64_t kMBlockBytes = std::int64_t(1) << 19;
constexpr std::int64_t kChunk = 16;
constexpr std::int64_t kMaxRows = 16;
constexpr std::int64_t kLineFloats = 16;  // floats per 64-byte cache line
// Grad-weight sums its tiles in runs of at most kSumTiles (and one run per super-block),
// each run's sums then added to the total: one float32 sum over all the tiles in a row
// erred 3.7e-5 of the result's scale on ResNet's 3x3 64 at batch 32 (6272 tiles; the
// direct engine 1.0e-5), growing with the batch; in runs, 5.7e-6. Runs of 128 tiles cost
// 6-7% more time (one thread, ResNet 3x3 64 at batch 1 and 8, VGG), of 256 up to 3%
// but VGG's 6% (its 7 super-blocks of 113 tiles were summed in a row before).
constexpr std::int64_t kSumTiles = 256;

// Cost of transforming one input tile's channel relative to one weight row's output
// channel (36 loads and stores and 12 six-point transforms against 9 loads, 36 stores,
// 9 three-point transforms): the choice between splitting the tiles and the channels.
constexpr double kInputCost = 1.5;

const WinogradKernels& winograd_kernels() {
  switch (active_isa()) {
#ifdef CONVKIT_X86
    case Isa::avx512: return winograd_kernels_f32_avx512();
    case Isa::avx2: return winograd_kernels_f32_avx2();
#endif
    default: return winograd_kernels_f32_scalar();
  }
}

// Where the taps of a phase-space kernel come from (see conv_winograd.h): phase-space
// tap (i, j) of input phase (ry, rx) is the kernel's tap (by + sh*i + ry, bx + sw*j + rx)
// when that is inside the kh x kw kernel, else a zero. Stride 1: by = bx = 0, phase-space
// taps are the kernel's own (a 1x1 or 2x2 kernel is zero-padded to 3x3).
struct PhaseTaps {
  std::int64_t kh, kw, sh, sw, by, bx;

  // The kernel's tap index (row-major) or -1.
  std::int64_t at(std::int64_t ph, std::int64_t i, std::int64_t j) const {
    const std::int64_t ty = by + sh * i + ph / sw, tx = bx + sw * j + ph % sw;
    return ty >= 0 && ty < kh && tx >= 0 && tx < kw ? ty * kw + tx : -1;
  }
  bool identity() const { return sh == 1 && sw == 1 && kh == 3 && kw == 3; }
  bool operator==(const PhaseTaps& o) const {
    return kh == o.kh && kw == o.kw && sh == o.sh && sw == o.sw && by == o.by && bx == o.bx;
  }
};

// An activation as a Winograd pass reads it: N images of C channels, H x W, in `layout`,
// split into ish x isw stride phases stacked as channels (see Problem).
struct PhasedActivation {
  std::int64_t N, C, H, W, ish, isw;
  Layout layout;

  std::int64_t Hi() const { return ceil_div(H, ish); }
  std::int64_t Wi() const { return ceil_div(W, isw); }
};

// One 3x3 stride-1 correlation in phase space as the Winograd passes see it: output
// (oy, ox) reads input (oy + top + i*dh, ox + left + j*dw) for tap (i, j); input pixels
// outside [0, Hi) x [0, Wi) are zeros. The input (N, C, H, W) is split into ish x isw
// phases: its pixel (h, w) is phase-space pixel (h / ish, w / isw), channel
// ((h % ish) * isw + w % isw) * C + c (a strided forward); likewise the output (N, K,
// OH, OW) into osh x osw phases (a strided grad-input). Forward at stride 1: no phases,
// top = -pad_top; the rest: see winograd_forward and winograd_grad_input.
struct Problem {
  std::int64_t N, C, H, W;  // input as given: N images of C channels
  std::int64_t K, OH, OW;   // output as given
  std::int64_t ish, isw, osh, osw;
  std::int64_t top, left, dh, dw;
  Layout layout;
  PhaseTaps taps;

  PhasedActivation input() const { return {N, C, H, W, ish, isw, layout}; }
  std::int64_t Ci() const { return ish * isw * C; }  // the reduction's channels
  std::int64_t Hi() const { return ceil_div(H, ish); }
  std::int64_t Wi() const { return ceil_div(W, isw); }
  std::int64_t Ko() const { return osh * osw * K; }  // the products' output channels
  std::int64_t Ho() const { return ceil_div(OH, osh); }
  std::int64_t Wo() const { return ceil_div(OW, osw); }
};

// A tile: image n, phase-space outputs (oy0 + a*dh, ox0 + b*dw) for a, b < 4.
struct Tile {
  std::int64_t n, oy0, ox0;
};

// The stride between the 36 transform positions of a buffer, n floats or a little more:
// an odd number of 64-byte lines, so that the 36 rows a transform loads or stores at
// once fall in 36 different L1 sets. With a multiple of 4 KiB (C x K-block floats, for
// most channel counts) they all fell in one set, and the weight transform ran 5x slower.
std::int64_t skewed(std::int64_t n) {
  const std::int64_t lines = ceil_div(n, 16);
  return (lines | 1) * 16;
}

// Lists the tiles (into out, unless null) in order of image, sub-grid, tile row, tile
// column; returns their count.
std::int64_t list_tiles(const Problem& p, Tile* out) {
  const std::int64_t OH = p.Ho(), OW = p.Wo();
  std::int64_t count = 0;
  for (std::int64_t n = 0; n < p.N; ++n)
    for (std::int64_t py = 0; py < std::min(p.dh, OH); ++py)
      for (std::int64_t px = 0; px < std::min(p.dw, OW); ++px) {
        const std::int64_t ty = ceil_div(ceil_div(OH - py, p.dh), 4), tx = ceil_div(ceil_div(OW - px, p.dw), 4);
        if (!out) {
          count += ty * tx;
          continue;
        }
        for (std::int64_t i = 0; i < ty; ++i)
          for (std::int64_t j = 0; j < tx; ++j) out[count++] = {n, py + 4 * p.dh * i, px + 4 * p.dw * j};
      }
  return count;
}

// The transformed weights of one block of outputs [o0, o0 + width) (width a multiple of
// W; outputs past O are zeros) for the weights w (wK, wC, kh, kw) seen through taps:
// forward, reduction rows r = (input phase, c) and outputs o = k; grad-input, r = k and
// o = (output phase, c), each kernel turned by 180 degrees. Row r of position q goes to
// U[q*q_ld + r*ld + o - o0] (ld >= width). The weights are first transposed so that o is
// contiguous, wt[r][t][o - o0] for phase-space tap t (9 x R x width floats), then
// transformed a vector of o at a time. Unless the phase-space taps are the kernel's own,
// the transpose goes to raw (the kernel's taps: as many floats as wt, or one kernel row
// kh*kw x wC, whichever is more) and wt gathers its rows from there.
void transform_weight_block(const WinogradKernels& wk, const ConvKernels<float>& ks, const float* w, std::int64_t wK,
                            std::int64_t wC, const PhaseTaps& taps, bool rotated, std::int64_t o0, std::int64_t width,
                            float* raw, float* wt, float* U, std::int64_t ld, std::int64_t q_ld) {
  const std::int64_t khw = taps.kh * taps.kw, phases = taps.sh * taps.sw;
  const std::int64_t R = rotated ? wK : phases * wC, O = rotated ? phases * wC : wK, n = std::min(width, O - o0);
  const bool direct = taps.identity();
  auto zero_tail = [&](float* row) { std::fill(row + n, row + width, 0.0f); };
  if (rotated) {
    for (std::int64_t k = 0; k < R; ++k) {
      float* dst = wt + k * 9 * width;
      if (direct) {
        ks.transpose(w + (k * wC + o0) * 9, 9, dst, width, n, 9);
      } else {  // raw[t][c] for all c; row t' of wt = runs of raw's rows, phase by phase
        ks.transpose(w + k * wC * khw, khw, raw, wC, wC, khw);
        for (std::int64_t t = 0; t < 9; ++t)
          for (std::int64_t ph = o0 / wC; ph * wC < o0 + n; ++ph) {
            const std::int64_t lo = std::max(o0, ph * wC), hi = std::min(o0 + n, (ph + 1) * wC);
            const std::int64_t tap = taps.at(ph, t / 3, t % 3);
            float* run = dst + t * width + lo - o0;
            if (tap < 0)
              std::fill(run, run + hi - lo, 0.0f);
            else
              std::copy(raw + tap * wC + lo - ph * wC, raw + tap * wC + hi - ph * wC, run);
          }
      }
      for (std::int64_t t = 0; t < 9; ++t) zero_tail(dst + t * width);
    }
  } else {
    float* tw = direct ? wt : raw;  // tw[c*khw + tap][o - o0]
    ks.transpose(w + o0 * wC * khw, wC * khw, tw, width, n, wC * khw);
    for (std::int64_t row = 0; row < wC * khw; ++row) zero_tail(tw + row * width);
    if (!direct)
      for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t t = 0; t < 9; ++t) {
          const std::int64_t tap = taps.at(r / wC, t / 3, t % 3);
          float* dst = wt + (r * 9 + t) * width;
          if (tap < 0)
            std::fill(dst, dst + width, 0.0f);
          else
            std::copy_n(tw + (r % wC * khw + tap) * width, width, dst);
        }
  }
  for (std::int64_t r = 0; r < R; ++r) {
    const float* t = wt + r * 9 * width;
    if (rotated)
      wk.weight(t + 8 * width, -width, width, U + r * ld, q_ld);
    else
      wk.weight(t, width, width, U + r * ld, q_ld);
  }
}

// Transformed weights kept between calls, most recent first: inference runs the same
// weights again and again, and transforming them still costs 5-20% of a call (one
// thread, winograd / direct time with repeated against new weights: ResNet 3x3 64 0.44
// against 0.52, ResNet 3x3 256 on 14x14 0.52 / 0.54, DeepLab dilation 2 0.47 / 0.53).
// A hit needs the same weights bit for bit (compared in full: an array may be changed
// in place between calls), the same orientation, phase-space taps and ISA. An entry is made only
// for weights seen before (a sample of 64 values, their address and shape recorded at
// the first call), so training, whose weights change every step, never pays for copies
// it would not reuse. Bounded in entries and bytes; an entry in use stays alive
// (shared_ptr) even when a concurrent call evicts it.
struct WeightKey {
  const float* w;
  std::int64_t n, Kw, KB;  // weights' size; transformed: outputs and block width
  PhaseTaps taps;
  bool rotated;
  Isa isa;
  bool operator==(const WeightKey& o) const {
    return w == o.w && n == o.n && Kw == o.Kw && KB == o.KB && taps == o.taps && rotated == o.rotated &&
           isa == o.isa;
  }
};

struct TransformedWeights {
  WeightKey key;
  std::vector<float> raw, U;
};

class WeightCache {
 public:
  // The entry for these weights, or null; `seen` tells whether they were sampled before.
  std::shared_ptr<const TransformedWeights> find(const WeightKey& k, bool* seen) {
    std::vector<float> sample = sample_of(k);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      const TransformedWeights& e = **it;
      if (e.key == k && std::memcmp(e.raw.data(), k.w, static_cast<std::size_t>(k.n) * sizeof(float)) == 0) {
        auto hit = *it;
        entries_.erase(it);
        entries_.insert(entries_.begin(), hit);
        return hit;
      }
    }
    *seen = false;
    for (const auto& [key, smp] : sampled_)
      if (key == k && smp == sample) *seen = true;
    sampled_.insert(sampled_.begin(), {k, std::move(sample)});
    if (sampled_.size() > kMaxEntries) sampled_.pop_back();
    return nullptr;
  }

  void add(std::shared_ptr<const TransformedWeights> e) {
    auto bytes = [](const auto& x) { return (x->raw.size() + x->U.size()) * sizeof(float); };
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.insert(entries_.begin(), std::move(e));
    std::size_t total = 0, keep = 0;
    while (keep < entries_.size() && keep < kMaxEntries && total + bytes(entries_[keep]) <= kMaxBytes)
      total += bytes(entries_[keep++]);
    entries_.resize(keep);
  }

 private:
  static std::vector<float> sample_of(const WeightKey& k) {
    std::vector<float> s;
    for (std::int64_t i = 0; i < 64; ++i) s.push_back(k.w[i * k.n / 64]);
    return s;
  }
  static constexpr std::size_t kMaxEntries = 16, kMaxBytes = std::size_t(128) << 20;
  std::mutex mutex_;
  std::vector<std::shared_ptr<const TransformedWeights>> entries_;
  std::vector<std::pair<WeightKey, std::vector<float>>> sampled_;
};

WeightCache& weight_cache() {
  static WeightCache* c = new WeightCache();  // never destroyed: calls may run during static teardown
  return *c;
}

// The activation made channels-last in phase space, channels padded to Cp with zeros, into
// xp (N x Hi x Wi x Cp floats); returns xp. Phase-space rows, filled by the ish input
// rows of each phase by phase, are split evenly over the threads. An NCHW row is
// transposed, straight into place when its pixels stay adjacent (isw = 1), else first
// split into its isw column phases (in `split`, threads x C x isw x Wi floats), each
// transposed into its channels (copying pixel by pixel instead, calls of 3 floats each,
// took 15% of AlexNet conv1's time); with fewer channels than a 16-float block, whose
// transpose goes element by element anyway, gathered into place in one pass.
const float* phase_channels_last(const ConvKernels<float>& ks, const PhasedActivation& a, const float* x,
                                 std::int64_t Cp, float* split, float* xp) {
  const std::int64_t Hi = a.Hi(), Wi = a.Wi(), rows = a.N * Hi;
  const std::int64_t parts = std::min<std::int64_t>(get_num_threads(), rows);
  parallel_for(parts, [&](std::int64_t part) {
    float* sp = split + part * a.C * a.isw * Wi;  // [c][rx][J]
    for (std::int64_t task = part * rows / parts; task < (part + 1) * rows / parts; ++task) {
      const std::int64_t n = task / Hi, I = task % Hi;
      float* dst = xp + task * Wi * Cp;
      if (Cp != a.ish * a.isw * a.C || a.ish * (I + 1) > a.H || a.isw * Wi != a.W)
        std::fill(dst, dst + Wi * Cp, 0.0f);
      for (std::int64_t ry = 0; ry < a.ish && a.ish * I + ry < a.H; ++ry) {
        const std::int64_t h = a.ish * I + ry;
        float* at = dst + ry * a.isw * a.C;  // phase (ry, 0)'s channels
        if (a.layout == Layout::NHWC) {
          const float* src = x + (n * a.H + h) * a.W * a.C;
          for (std::int64_t wx = 0; wx < a.W; ++wx)
            std::copy_n(src + wx * a.C, a.C, at + wx / a.isw * Cp + wx % a.isw * a.C);
          continue;
        }
        const float* planes = x + (n * a.C * a.H + h) * a.W;
        if (a.isw == 1) {
          ks.transpose(planes, a.H * a.W, at, Cp, a.C, a.W);
          continue;
        }
        if (a.C < kLineFloats) {
          for (std::int64_t J = 0; J < Wi; ++J)
            for (std::int64_t rx = 0; rx < a.isw && a.isw * J + rx < a.W; ++rx)
              for (std::int64_t c = 0; c < a.C; ++c) at[J * Cp + rx * a.C + c] = planes[c * a.H * a.W + a.isw * J + rx];
          continue;
        }
        for (std::int64_t rx = 0; rx < a.isw && rx < a.W; ++rx) {
          const std::int64_t cols = ceil_div(a.W - rx, a.isw);
          for (std::int64_t c = 0; c < a.C; ++c) {
            const float* from = planes + c * a.H * a.W + rx;
            float* to = sp + (c * a.isw + rx) * Wi;
            for (std::int64_t J = 0; J < cols; ++J) to[J] = from[J * a.isw];
          }
          ks.transpose(sp + rx * Wi, a.isw * Wi, at + rx * a.C, Cp, a.C, cols);
        }
      }
    }
  });
  return xp;
}

// The 36 pixels of a tile's input window in phase space, channels-last (xin, Cp channels
// a pixel, see phase_channels_last): into src, a zero run for those outside the input.
void input_pixels(const Problem& p, const Tile& tl, const float* xin, std::int64_t Cp, const float* zeros,
                  const float** src) {
  const std::int64_t Hi = p.Hi(), Wi = p.Wi();
  for (int i = 0; i < 6; ++i) {
    const std::int64_t iy = tl.oy0 + p.top + i * p.dh;
    for (int j = 0; j < 6; ++j) {
      const std::int64_t ix = tl.ox0 + p.left + j * p.dw;
      const bool inside = iy >= 0 && iy < Hi && ix >= 0 && ix < Wi;
      src[6 * i + j] = inside ? xin + ((tl.n * Hi + iy) * Wi + ix) * Cp : zeros;
    }
  }
}

// The transforms prefetch the next tile's pixels while this one is transformed when the
// channels-last copy they are in has `bytes` past the L2: their loads from L3 or memory
// waited on the cache. One thread: grad-weight of ResNet 3x3 64 at batch 8 5.6 -> 4.9
// ms, VGG 128 7.4 -> 6.8 ms, the forward of the first 5.3-5.9 -> 5.0-5.5 ms; on ResNet
// 3x3 64 at batch 1 (0.9 MB) the forward lost 3%.
bool worth_prefetching(std::int64_t bytes) { return bytes > kL2Bytes; }

// Prefetches the n pixels' channels.
void prefetch(const float* const* px, int n, std::int64_t channels) {
  for (int i = 0; i < n; ++i)
    for (std::int64_t c = 0; c < channels; c += kLineFloats) __builtin_prefetch(px[i] + c);
}

void run(const Problem& p, const float* x, const float* w, bool rotated, const float* bias, bool relu, float* y) {
  const std::int64_t T = list_tiles(p, nullptr);
  if (T == 0) return;
  const WinogradKernels& wk = winograd_kernels();
  const ConvKernels<float>& ks = conv_kernels<float>();
  const std::int64_t C = p.Ci(), K = p.Ko(), Hi = p.Hi(), Wi = p.Wi();  // in phase space
  // The GEMM kernel: least rows (tiles, rounded to R) x columns (output channels, rounded
  // to P) per efficiency. Unlike the direct engine's choice, a last narrower run of
  // columns costs a full tile: the narrow tiles are load-bound (ResNet's K = 64 ran as
  // 48 + 16 columns on 8x48 tiles, 20% slower than on 6x64 tiles).
  const DirectKernel<float>& kern = cheapest(ks.direct, forced_conv_kernel(false), [&](const DirectKernel<float>& k) {
    return double(round_up(T, k.R)) * double(round_up(K, k.P));
  });
  const std::int64_t R = kern.R, P = kern.P;
  const std::int64_t Cp = round_up(C, wk.W), Kw = round_up(K, wk.W);
  // Output-channel blocks of KB (a multiple of P, the last one narrower): their
  // transformed weights, 36 x C x KB floats, are made right before the products that
  // read them (see kUBytes).
  const std::int64_t KB = std::min(round_up(Kw, P), std::max(P, kUBytes / (36 * 4 * C) / P * P));
  const std::int64_t nkb = ceil_div(Kw, KB);
  // Super-blocks of S tiles, as many as fit kBlockBytes (or kMinTilesLargeWeights);
  // tasks (super-block, slice of the output-channel blocks). Each task transforms the
  // weights of its slice and the input tiles of its super-block, so more super-blocks
  // repeat the weight transform and more slices the input transform: when the
  // super-blocks are fewer than the threads, the cheaper of the two splits makes the
  // tasks (a multiple of the threads' count, so that every thread gets as many).
  const std::int64_t least = 36 * 4 * C * Kw > kL2Bytes ? round_up(kMinTilesLargeWeights, R) : R;
  const std::int64_t fit = std::max(least, kBlockBytes / (36 * 4 * (Cp + KB)) / R * R);
  const std::int64_t threads = get_num_threads();
  std::int64_t blocks = ceil_div(T, fit), slices = 1;
  if (blocks < threads) {
    const double more_blocks = double(round_up(blocks, threads) - blocks) * double(Kw);  // x C weight rows
    const double more_slices = kInputCost * double(threads - 1) * double(T);             // x C tile rows
    if (nkb >= threads && more_slices < more_blocks)
      slices = threads;
    else
      blocks = std::min(round_up(blocks, threads), ceil_div(T, R));
  }
  blocks = round_up(blocks, std::min(threads, blocks));
  // The tiles' groups of R dealt out evenly, super-block sb starting at first_tile(sb): as
  // blocks of S = round_up(T / blocks, R) tiles, ResNet's 196 tiles of 3x3 64 made
  // blocks of 56, 56, 56 and 28, one thread's two blocks 1.33x the other's, and 2
  // threads ran 1.75x faster than one (now 1.84x).
  const std::int64_t groups_in_all = ceil_div(T, R);
  const std::int64_t S = ceil_div(groups_in_all, blocks) * R;  // tiles in the largest super-block
  auto first_tile = [&](std::int64_t sb) { return std::min(T, sb * groups_in_all / blocks * R); };
  const std::int64_t slots = std::min(threads, blocks * slices);
  const std::int64_t Vq = skewed(S * Cp), Mq = skewed(S * KB), Uq = skewed(C * KB);  // position strides
  const bool in_place = p.layout == Layout::NHWC && Cp == p.C && p.ish * p.isw == 1;
  const bool staged = p.layout == Layout::NCHW && p.K >= wk.W;  // see 3.

  Workspace ws;
  const auto tiles_at = ws.add<Tile>(T);
  const auto ent_at = ws.add<Entry>(C);
  const auto bias_at = ws.add<float>(bias ? Kw : 0);
  const auto x_at = ws.add<float>(in_place ? 0 : buffer_size({p.N, Hi, Wi, Cp}));
  const bool split_rows = p.layout == Layout::NCHW && p.isw > 1;  // see 2.
  const auto split_at = ws.add<float>(split_rows ? buffer_size({threads, p.C, p.isw, Wi}) : 0);
  const auto zero_at = ws.add<float>(Cp);
  const auto staged_at = ws.add<float>(staged ? buffer_size({p.N, p.OH, p.OW, p.K}) : 0);
  const auto V_at = ws.add<float>(buffer_size({slots, 36, Vq}));
  const auto M_at = ws.add<float>(buffer_size({slots, 36, Mq}) + wk.W);  // an output phase's last vector reads past
  const auto U_at = ws.add<float>(buffer_size({slots, 36, Uq}));
  const std::int64_t wK = rotated ? p.C : p.K, wC = rotated ? p.K : p.C;  // the weights' (K, C)
  // transform_weight_block's scratch: wt, and raw unless the taps are the kernel's own
  // (the forward's transpose, wC x kh*kw rows of KB floats, fits wt's size; the
  // grad-input's, kh*kw x wC for one k at a time, can exceed it: one grad_output channel
  // and many output phases make KB small against the s*s*wC outputs)
  const std::int64_t wt_size = buffer_size({9, C, KB});
  const std::int64_t raw_size = std::max(wt_size, buffer_size({p.taps.kh * p.taps.kw, wC}));
  const auto wt_at = ws.add<float>(buffer_size({std::max(slots, nkb), wt_size}));
  const auto raw_at = ws.add<float>(p.taps.identity() ? 0 : buffer_size({std::max(slots, nkb), raw_size}));
  ws.allocate();
  Tile* tiles = ws.at<Tile>(tiles_at);
  list_tiles(p, tiles);
  float* zeros = ws.at<float>(zero_at);
  std::fill(zeros, zeros + Cp, 0.0f);
  Entry* ent = ws.at<Entry>(ent_at);
  for (std::int64_t c = 0; c < C; ++c) ent[c] = {c * KB, c};

  // 1. Weights: the transformed blocks of weights seen before are kept (see WeightCache),
  // one after another (block b at b x 36 x Uq); others are transformed per task.
  const WeightKey key{w, buffer_size({wK, wC, p.taps.kh, p.taps.kw}), Kw, KB, p.taps, rotated, active_isa()};
  bool seen = false;
  std::shared_ptr<const TransformedWeights> cached = weight_cache().find(key, &seen);
  if (!cached && seen) {
    auto e = std::make_shared<TransformedWeights>();
    e->key = key;
    e->raw.assign(w, w + key.n);
    e->U.resize(static_cast<std::size_t>(buffer_size({nkb, 36, Uq})));
    parallel_for(nkb, [&](std::int64_t kb) {
      transform_weight_block(wk, ks, w, wK, wC, p.taps, rotated, kb * KB, std::min(KB, Kw - kb * KB),
                             ws.at<float>(raw_at) + kb * raw_size, ws.at<float>(wt_at) + kb * wt_size,
                             e->U.data() + kb * 36 * Uq, KB, Uq);
    });
    weight_cache().add(e);
    cached = e;
  }
  float* b = nullptr;
  if (bias) {
    b = ws.at<float>(bias_at);
    std::copy(bias, bias + K, b);
    std::fill(b + K, b + Kw, 0.0f);
  }

  // 2. Channels-last input in phase space (see phase_channels_last).
  const float* xin =
      in_place ? x : phase_channels_last(ks, p.input(), x, Cp, ws.at<float>(split_at), ws.at<float>(x_at));
  const bool prefetch_x = worth_prefetching(p.N * Hi * Wi * Cp * 4);
  // NCHW output of a vector's channels or more goes through a channels-last copy,
  // transposed at the end (4.): written directly, each output vector became W scalar
  // stores into W channel planes, with output phases (a strided grad-input) into every
  // other pixel of each. One thread, CPU time: DCGAN's conv_transpose2d (its grad-input
  // phases) 2.67 -> 2.11 ms, ResNet 3x3 64 forward 0.45 -> 0.43 ms; with fewer channels
  // the transpose goes element by element too, and AlexNet's 3-channel grad-input took
  // 0.70 -> 0.78 ms.
  float* yout = staged ? ws.at<float>(staged_at) : y;
  const ActStrides ys = act_strides(staged ? Layout::NHWC : p.layout, p.K, p.OH, p.OW);

  // 3. One pool task per thread slot, each taking tasks from a shared counter until none
  // is left: the passes of a task run back to back on one core, V, M and the weight block
  // staying in its caches, with no barrier between them (a barrier per pass cost more
  // than the passes on small layers). Taken, not dealt out in turn: a thread that another
  // process holds off its core for a while leaves its tasks to the other instead of
  // making it wait at the end (one measurement, a 0.5 ms time slice taken every 10 ms:
  // the ResNet block's 3x3 64 forward at 2 threads 5.2 ms dealt out, 4.6-5.0 taken, 3.7-
  // 4.3 undisturbed; PyTorch's unchanged). A task's results do not depend on which slot
  // computes it.
  std::atomic<std::int64_t> next_task{0};
  parallel_for(slots, [&](std::int64_t slot) {
    float* V = ws.at<float>(V_at) + slot * 36 * Vq;
    float* M = ws.at<float>(M_at) + slot * 36 * Mq;
    std::int64_t have = -1;  // the super-block whose input transform V holds
    for (std::int64_t task; (task = next_task.fetch_add(1, std::memory_order_relaxed)) < blocks * slices;) {
      const std::int64_t sb = task / slices, slice = task % slices;
      const std::int64_t t0 = first_tile(sb), nt = first_tile(sb + 1) - t0;
      if (nt <= 0) continue;
      // 3a. Input transform.
      if (have != sb) {
        const float* src[36];
        for (std::int64_t s = 0; s < nt; ++s) {
          if (prefetch_x && s + 1 < nt) {
            input_pixels(p, tiles[t0 + s + 1], xin, Cp, zeros, src);
            prefetch(src, 36, Cp);
          }
          input_pixels(p, tiles[t0 + s], xin, Cp, zeros, src);
          wk.input(src, Cp, V + s * Cp, Vq);
        }
        have = sb;
      }
      for (std::int64_t kb = slice * nkb / slices; kb < (slice + 1) * nkb / slices; ++kb) {
        const std::int64_t k0 = kb * KB, kw = std::min(KB, Kw - k0);
        // 3b. The block's transformed weights U[q][c][k - k0], then one product per
        // position: M[q] = V[q] U[q], tiles in groups of R, output channels in runs of
        // P (U's runs stay in L1 across the tile groups).
        const float* U;
        if (cached) {
          U = cached->U.data() + kb * 36 * Uq;
        } else {
          float* Ub = ws.at<float>(U_at) + slot * 36 * Uq;
          transform_weight_block(wk, ks, w, wK, wC, p.taps, rotated, k0, kw, ws.at<float>(raw_at) + slot * raw_size,
                                 ws.at<float>(wt_at) + slot * wt_size, Ub, KB, Uq);
          U = Ub;
        }
        const std::int64_t groups = ceil_div(nt, R);
        for (std::int64_t q = 0; q < 36; ++q)
          for (std::int64_t kt = 0; kt < ceil_div(kw, P); ++kt)
            for (std::int64_t tg = 0; tg < groups; ++tg) {
              const std::int64_t s0 = tg * R;
              std::int64_t kk;
              const int v = kern.span(kt, kw, kk);
              const OutMap<float> out{M + q * Mq + s0 * KB, KB, 0, 1, 1, KB, KB};
              const DirectTile<float> tile{U + q * Uq + kk, ent, C, V + q * Vq + s0 * Cp, Cp, nullptr,
                                           false, static_cast<int>(std::min(R, nt - s0)), 0, kk, out};
              kern.tile[static_cast<std::size_t>(v - 1)](tile);
            }
        // 3c. Output transform, bias and ReLU into y: the block's channels phase by
        // phase, each phase's into its own pixels of y.
        float* dst[16];
        for (std::int64_t s = 0; s < nt; ++s) {
          const Tile& tl = tiles[t0 + s];
          for (std::int64_t ph = k0 / p.K; ph * p.K < std::min(k0 + kw, K); ++ph) {
            const std::int64_t lo = std::max(k0, ph * p.K), hi = std::min({k0 + kw, (ph + 1) * p.K, K});
            const std::int64_t ry = ph / p.osw, rx = ph % p.osw;
            for (int a = 0; a < 4; ++a)
              for (int bb = 0; bb < 4; ++bb) {
                const std::int64_t oy = (tl.oy0 + a * p.dh) * p.osh + ry, ox = (tl.ox0 + bb * p.dw) * p.osw + rx;
                dst[4 * a + bb] = oy < p.OH && ox < p.OW
                                      ? yout + tl.n * ys.n + oy * ys.h + ox * ys.w + (lo - ph * p.K) * ys.c
                                      : nullptr;
              }
            wk.output(M + s * KB + lo - k0, Mq, hi - lo, b ? b + lo : nullptr, relu, dst, ys.c);
          }
        }
      }
    }
  });
  if (staged) {  // 4. NCHW: the channels-last output transposed into y
    // Pixels in chunks of at most 1024, of near-equal size, at least one per thread: in
    // chunks of 1024, DeepLab's 1089 pixels made one of 1024 and one of 65, and its
    // forward ran 6% slower at 2 threads.
    const std::int64_t HW = p.OH * p.OW, per_image = std::max(ceil_div(HW, 1024), ceil_div(threads, p.N));
    const std::int64_t chunk = round_up(ceil_div(HW, per_image), 16), chunks = ceil_div(HW, chunk);
    parallel_for(p.N * chunks, [&](std::int64_t task) {
      const std::int64_t n = task / chunks, p0 = task % chunks * chunk, cnt = std::min(chunk, HW - p0);
      ks.transpose(yout + (n * HW + p0) * p.K, p.K, y + n * p.K * HW + p0, HW, cnt, p.K);
    });
  }
}

// A strided layer splits its input into stride phases (see conv_winograd.h); phase-space
// tap i of phase r reads input pixel s*(o + top + i) + r, which is the kernel's tap
// by + s*i + r of output o when top = -ceil(pad / s) (by: winograd_phase_base).
PhaseTaps phase_taps(const ConvGeom& g) {
  return {g.kh, g.kw, g.sh, g.sw, winograd_phase_base(g.pt, g.sh), winograd_phase_base(g.pl, g.sw)};
}

Problem forward_problem(const ConvGeom& g, Layout layout) {
  return {g.N, g.C, g.H, g.W, g.K, g.OH, g.OW, g.sh, g.sw, 1, 1, -ceil_div(g.pt, g.sh), -ceil_div(g.pl, g.sw), g.dh,
          g.dw, layout, phase_taps(g)};
}

}  // namespace

void winograd_forward(const ConvGeom& g, Layout layout, const float* x, const float* w, const float* bias, bool relu,
                      float* y) {
  run(forward_problem(g, layout), x, w, false, bias, relu, y);
}

// grad_x = the forward's adjoint in phase space: phase-space pixel h of grad_x (its
// input) gathers grad_y(h - top_f - i*dh) w[i] over the taps, a correlation of the taps
// turned by 180 degrees (i' = 2 - i) reading grad_y at h + (-top_f - 2*dh) + i'*dh:
// top = -top_f - 2*dh (positive when the padding exceeds the kernel's reach: those grad_y
// rows are skipped, as the bounds test treats any offset alike). Its output is in phase
// space, split back into grad_x's pixels by the output transform.
void winograd_grad_input(const ConvGeom& g, Layout layout, const float* gy, const float* w, float* gx) {
  run({g.N, g.K, g.OH, g.OW, g.C, g.H, g.W, 1, 1, g.sh, g.sw, ceil_div(g.pt, g.sh) - 2 * g.dh,
       ceil_div(g.pl, g.sw) - 2 * g.dw, g.dh, g.dw, layout, phase_taps(g)},
      gy, w, true, nullptr, false, gx);
}

// Grad-weight by F(3x3, 4x4) over the forward's tiles (see conv_winograd.h). Each 4x4
// tile of grad_output, the kernel of a correlation with the tile's 6x6 input window,
// adds a 3x3 block to the phase-space weight gradient; the tiles' sums are taken in the
// transform domain, M[q][c][k] = sum over tiles of V[q][tile][c] U[q][tile][k] (V: the
// input transform, U: grad_output's; 36 products [C x tiles] x [tiles x K] through the
// grad-weight kernel, its rows input channels broadcast from V, its vectors output
// channels from U), and transformed back once per (c, k) pair at the end.
void winograd_grad_weight(const ConvGeom& g, Layout layout, const float* gy, const float* x, float* gw) {
  const std::int64_t E = g.C * g.kh * g.kw;
  const Problem p = forward_problem(g, layout);
  const std::int64_t T = list_tiles(p, nullptr);
  if (T == 0) {
    std::fill(gw, gw + g.K * E, 0.0f);
    return;
  }
  const WinogradKernels& wk = winograd_kernels();
  const ConvKernels<float>& ks = conv_kernels<float>();
  const std::int64_t C = p.Ci(), K = g.K, Cp = round_up(C, wk.W);
  const GwKernel<float>& kern = cheapest(ks.gw, forced_conv_kernel(true), [&](const GwKernel<float>& k) {
    return double(round_up(Cp, k.R)) * double(round_up(K, k.KB));
  });
  const std::int64_t R = kern.R, KB = kern.KB, Cr = round_up(Cp, R), Kp = round_up(K, KB), nkb = Kp / KB;
  if (R > kMaxRows) throw std::logic_error("grad-weight kernel of more than kMaxRows rows");
  const std::int64_t threads = get_num_threads();
  // Tasks: (block of KB output channels, group of input channels), each accumulating its
  // sums over every position, a 36 x rows x KB block of M kept within kMBlockBytes (in
  // L2) and transformed back right after the last tiles. Groups of equal size, at least
  // as many tasks as threads where the channels allow.
  std::int64_t ncg = ceil_div(Cr * KB * 36 * 4, kMBlockBytes);
  ncg = std::min(std::max(ncg, ceil_div(threads, nkb)), Cr / R);
  const std::int64_t Rc = round_up(ceil_div(Cr, ncg), R);
  ncg = ceil_div(Cr, Rc);
  // Super-blocks of S tiles (see kGradWeightAllBytes); M's blocks carry the sums from
  // one to the next.
  const std::int64_t tile_bytes = 36 * 4 * (Cp + Kp);
  const std::int64_t S = T * tile_bytes <= kGradWeightAllBytes
                             ? T
                             : std::min(T, std::max<std::int64_t>(kChunk, kGradWeightBytes / tile_bytes));
  const std::int64_t Vq = skewed(S * Cp), Uq = skewed(nkb * S * KB), Mb = 36 * Rc * KB;
  // One pass over all the tiles: each task's sums live in its slot's block only while
  // the task runs (9.4 MB of sums for DeepLab's 256 channels, all kept, evicted the
  // grad-input's data from the L3: a backward pass ran 25% slower than its two halves).
  const bool one_pass = S == T;
  const std::int64_t slots = std::min(threads, nkb * ncg);
  const PhasedActivation xa = p.input(), ya{g.N, K, g.OH, g.OW, 1, 1, layout};
  const bool x_in_place = layout == Layout::NHWC && Cp == C && p.ish * p.isw == 1;
  const bool gy_in_place = layout == Layout::NHWC && Kp == K;

  Workspace ws;
  const auto tiles_at = ws.add<Tile>(T);
  const auto x_at = ws.add<float>(x_in_place ? 0 : buffer_size({g.N, xa.Hi(), xa.Wi(), Cp}));
  const auto split_at =
      ws.add<float>(layout == Layout::NCHW && p.isw > 1 ? buffer_size({threads, g.C, p.isw, xa.Wi()}) : 0);
  const auto gy_at = ws.add<float>(gy_in_place ? 0 : buffer_size({g.N, g.OH, g.OW, Kp}));
  const auto zero_at = ws.add<float>(std::max(Cp, Kp));
  const auto V_at = ws.add<float>(buffer_size({36, Vq}));
  const auto U_at = ws.add<float>(buffer_size({36, Uq}));
  const auto M_at = ws.add<float>(buffer_size({one_pass ? slots : nkb * ncg, Mb}));
  const auto taps_at = ws.add<float>(buffer_size({slots, Rc, 9, KB}));
  const auto part_at = ws.add<float>(buffer_size({slots, Rc, KB}));
  const auto phase_at = ws.add<float>(p.taps.identity() ? 0 : buffer_size({K, C, 9}));
  ws.allocate();
  Tile* tiles = ws.at<Tile>(tiles_at);
  list_tiles(p, tiles);
  float* zeros = ws.at<float>(zero_at);
  std::fill(zeros, zeros + std::max(Cp, Kp), 0.0f);
  float *V = ws.at<float>(V_at), *U = ws.at<float>(U_at), *M = ws.at<float>(M_at);
  const bool direct = p.taps.identity();
  float* phase = direct ? gw : ws.at<float>(phase_at);
  const float* xin = x_in_place ? x : phase_channels_last(ks, xa, x, Cp, ws.at<float>(split_at), ws.at<float>(x_at));
  const float* gyin = gy_in_place ? gy : phase_channels_last(ks, ya, gy, Kp, nullptr, ws.at<float>(gy_at));
  const bool prefetch_x = worth_prefetching(g.N * xa.Hi() * xa.Wi() * Cp * 4),
             prefetch_gy = worth_prefetching(g.N * g.OH * g.OW * Kp * 4);

  // A tile's 4x4 pixels of grad_output, channels-last (a zero run outside it).
  auto output_pixels = [&](const Tile& tl, const float** gsrc) {
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) {
        const std::int64_t oy = tl.oy0 + a * p.dh, ox = tl.ox0 + b * p.dw;
        gsrc[4 * a + b] = oy < g.OH && ox < g.OW ? gyin + ((tl.n * g.OH + oy) * g.OW + ox) * Kp : zeros;
      }
  };
  for (std::int64_t t0 = 0; t0 < T; t0 += S) {
    const std::int64_t nt = std::min(S, T - t0);
    const bool first = t0 == 0, last = t0 + nt == T;
    // 1. Transforms, kChunk tiles a task: the input's into V[q][tile][c], grad_output's
    // into U[q][kb][tile][k - kb*KB].
    parallel_for(ceil_div(nt, kChunk), [&](std::int64_t chunk) {
      const std::int64_t end = std::min(nt, (chunk + 1) * kChunk);
      const float *src[36], *gsrc[16], *shifted[16];
      for (std::int64_t s = chunk * kChunk; s < end; ++s) {
        if (prefetch_x && s + 1 < end) {
          input_pixels(p, tiles[t0 + s + 1], xin, Cp, zeros, src);
          prefetch(src, 36, Cp);
        }
        if (prefetch_gy && s + 1 < end) {
          output_pixels(tiles[t0 + s + 1], gsrc);
          prefetch(gsrc, 16, Kp);
        }
        input_pixels(p, tiles[t0 + s], xin, Cp, zeros, src);
        output_pixels(tiles[t0 + s], gsrc);
        wk.input(src, Cp, V + s * Cp, Vq);
        for (std::int64_t kb = 0; kb < nkb; ++kb) {
          for (int i = 0; i < 16; ++i) shifted[i] = gsrc[i] + kb * KB;
          wk.grad_output(shifted, KB, U + (kb * S + s) * KB, Uq);
        }
      }
    });
    // 2. Products, task by task (see above), each thread slot taking tasks from a shared
    // counter; rows past Cp read row Cp - 1 (sums never used), rows past Cr are not in
    // the block. After the last tiles, the block's output transform (taps[c][t][k] for
    // its real channels, in the slot's buffer) and its transpose into gw (k, c, t),
    // through phase space when the taps are not the kernel's own.
    std::atomic<std::int64_t> next{0};
    parallel_for(slots, [&](std::int64_t slot) {
      std::int64_t off[kMaxRows], at[kMaxRows];
      for (std::int64_t task; (task = next.fetch_add(1, std::memory_order_relaxed)) < nkb * ncg;) {
        const std::int64_t kb = task / ncg, c0 = task % ncg * Rc, rows = std::min(Rc, Cr - c0);
        float* blk = M + (one_pass ? slot : task) * Mb;
        float* part = ws.at<float>(part_at) + slot * Rc * KB;
        for (std::int64_t q = 0; q < 36; ++q) {
          float* acc = blk + q * Rc * KB;
          if (first) std::fill(acc, acc + rows * KB, 0.0f);
          for (std::int64_t s0 = 0; s0 < nt; s0 += kSumTiles) {
            float* into = first && s0 == 0 ? acc : part;  // see kSumTiles
            if (into == part) std::fill(part, part + rows * KB, 0.0f);
            for (std::int64_t r0 = 0; r0 < rows; r0 += R) {
              for (std::int64_t r = 0; r < R; ++r) off[r] = std::min(c0 + r0 + r, Cp - 1), at[r] = r0 + r;
              kern.fn({U + q * Uq + (kb * S + s0) * KB, V + q * Vq + s0 * Cp, off, at,
                       std::min(kSumTiles, nt - s0), 1, KB, Cp, into});
            }
            if (into == part)
              for (std::int64_t i = 0; i < rows * KB; ++i) acc[i] += part[i];
          }
        }
        const std::int64_t real = std::min(c0 + rows, C) - c0, k0 = kb * KB, kn = std::min(KB, K - k0);
        if (!last || real <= 0 || kn <= 0) continue;
        float* taps = ws.at<float>(taps_at) + slot * Rc * 9 * KB;
        for (std::int64_t c = 0; c < real; ++c) wk.weight_grad(blk + c * KB, Rc * KB, KB, taps + c * 9 * KB, KB);
        ks.transpose(taps, KB, phase + k0 * C * 9 + c0 * 9, C * 9, real * 9, kn);
      }
    });
  }
  if (direct) return;
  // Phase space back to the kernel's taps: phase-space tap t of channel ci is gw's column
  // to[ci*9 + t] of each row k (or none), the map made once.
  std::vector<std::int64_t> to(static_cast<std::size_t>(C * 9));
  for (std::int64_t ci = 0; ci < C; ++ci)
    for (std::int64_t t = 0; t < 9; ++t) {
      const std::int64_t tap = p.taps.at(ci / g.C, t / 3, t % 3);
      to[static_cast<std::size_t>(ci * 9 + t)] = tap < 0 ? -1 : ci % g.C * g.kh * g.kw + tap;
    }
  parallel_for(K, [&](std::int64_t k) {
    for (std::int64_t i = 0; i < C * 9; ++i)
      if (to[static_cast<std::size_t>(i)] >= 0) gw[k * E + to[static_cast<std::size_t>(i)]] = phase[k * C * 9 + i];
  });
}

}  // namespace convkit
