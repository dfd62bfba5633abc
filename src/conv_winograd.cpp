// The Winograd F(4x4, 3x3) operator (see conv_winograd.h). Per call:
//   1. the weights are transformed once: U[p][c][k] = (G w[k][c] G^T)[p], p < 36,
//      k padded with zeros to the GEMM kernel's pixel tile P (and kept for the next
//      calls with the same weights, see WeightCache);
//   2. the input is made channels-last with the channel count padded to the vector
//      width W (NCHW is transposed; an NHWC input with C % W == 0 is read in place);
//   3. the tiles are processed in super-blocks of S tiles, each by one thread in three passes:
//      input transform V[p][s][c]; for each p the product M[p] = V[p] U[p] through the
//      direct engine's kernel (roles: its "output channels" are tiles, its "pixels" the
//      output channels k, its reduction entries the input channels c); output
//      transform of M into y with bias and ReLU. S keeps V and M of a super-block
//      (36 * S * (C + K) floats) within kBlockBytes, so they are re-read from cache,
//      while U streams once per super-block.
// A tile's result does not depend on its super-block (each product row is its own
// reduction, in the same order), so results do not depend on the thread count.
#include "conv_winograd.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
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
// 64 batch 8 1.28x -> 1.42x, DeepLab dilation 2 1.54x -> 1.72x, VGG 128 unchanged. The
// weights then stream once per super-block (C = K = 256: 9.4 MB per 14 tiles, from L3).
constexpr std::int64_t kBlockBytes = std::int64_t(1) << 20;

const WinogradKernels& winograd_kernels() {
  switch (active_isa()) {
#ifdef CONVKIT_X86
    case Isa::avx512: return winograd_kernels_f32_avx512();
    case Isa::avx2: return winograd_kernels_f32_avx2();
#endif
    default: return winograd_kernels_f32_scalar();
  }
}

// One 3x3 stride-1 correlation as the Winograd passes see it: output (oy, ox) reads
// input (oy + top + i*dh, ox + left + j*dw) for tap (i, j); input pixels outside
// [0, H) x [0, W) are zeros. Forward: top = -pad_top; grad-input: see below.
struct Problem {
  std::int64_t N, C, H, W;  // input: N images of C channels (the reduction)
  std::int64_t K, OH, OW;   // output
  std::int64_t top, left, dh, dw;
  Layout layout;
};

// A tile: image n, outputs (oy0 + a*dh, ox0 + b*dw) for a, b < 4.
struct Tile {
  std::int64_t n, oy0, ox0;
};

std::vector<Tile> tiles_of(const Problem& p) {
  std::vector<Tile> tiles;
  for (std::int64_t n = 0; n < p.N; ++n)
    for (std::int64_t py = 0; py < std::min(p.dh, p.OH); ++py)
      for (std::int64_t px = 0; px < std::min(p.dw, p.OW); ++px) {
        const std::int64_t ty = ceil_div(ceil_div(p.OH - py, p.dh), 4), tx = ceil_div(ceil_div(p.OW - px, p.dw), 4);
        for (std::int64_t i = 0; i < ty; ++i)
          for (std::int64_t j = 0; j < tx; ++j) tiles.push_back({n, py + 4 * p.dh * i, px + 4 * p.dw * j});
      }
  return tiles;
}

// U[q][r][o] (rows of Kp floats, o >= O zeros) for the weights w (wK, wC, 3, 3):
// forward r = c, o = k; grad-input r = k, o = c with each kernel turned 180 degrees.
// The weights are first transposed so that o is contiguous, wt[r][t][o] for tap t, then
// transformed a vector of o at a time. Tasks: runs of kRowsPerTask reduction rows (the
// forward's transposes are then whole 16 x 16 blocks).
void transform_weights(const WinogradKernels& wk, const ConvKernels<float>& ks, const float* w, std::int64_t wK,
                       std::int64_t wC, bool rotated, float* wt, float* U, std::int64_t Kp) {
  constexpr std::int64_t kRowsPerTask = 16;
  const std::int64_t R = rotated ? wK : wC, O = rotated ? wC : wK;
  parallel_for(ceil_div(R, kRowsPerTask), [&](std::int64_t task) {
    const std::int64_t r0 = task * kRowsPerTask, r1 = std::min(R, r0 + kRowsPerTask);
    if (rotated)
      for (std::int64_t k = r0; k < r1; ++k) ks.transpose(w + k * wC * 9, 9, wt + k * 9 * Kp, Kp, wC, 9);
    else
      ks.transpose(w + r0 * 9, wC * 9, wt + r0 * 9 * Kp, Kp, wK, (r1 - r0) * 9);
    for (std::int64_t row = r0 * 9; row < r1 * 9; ++row) std::fill(wt + row * Kp + O, wt + (row + 1) * Kp, 0.0f);
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* taps = wt + r * 9 * Kp;
      if (rotated)
        wk.weight(taps + 8 * Kp, -Kp, Kp, U + r * Kp, R * Kp);
      else
        wk.weight(taps, Kp, Kp, U + r * Kp, R * Kp);
    }
  });
}

// Transformed weights kept between calls, most recent first: inference runs the same
// weights again and again, and on a layer of few tiles (ResNet 3x3 256 on 14x14: 16
// tiles) transforming them (36 x C x K floats written) costs as much as the products.
// A hit needs the same weights bit for bit (compared in full: an array may be changed
// in place between calls), the same orientation, padding and ISA. An entry is made only
// for weights seen before (a sample of 64 values, their address and shape recorded at
// the first call), so training, whose weights change every step, never pays for copies
// it would not reuse. Bounded in entries and bytes; an entry in use stays alive
// (shared_ptr) even when a concurrent call evicts it.
struct WeightKey {
  const float* w;
  std::int64_t n, Kp;
  bool rotated;
  Isa isa;
  bool operator==(const WeightKey& o) const {
    return w == o.w && n == o.n && Kp == o.Kp && rotated == o.rotated && isa == o.isa;
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

void run(const Problem& p, const float* x, const float* w, bool rotated, const float* bias, bool relu, float* y) {
  const std::vector<Tile> tiles = tiles_of(p);
  const std::int64_t T = static_cast<std::int64_t>(tiles.size());
  if (T == 0) return;
  const WinogradKernels& wk = winograd_kernels();
  const ConvKernels<float>& ks = conv_kernels<float>();
  const DirectKernel<float>& kern = choose_direct_kernel(ks, T, p.K);
  const std::int64_t R = kern.R, P = kern.P;
  const std::int64_t Cp = ceil_div(p.C, wk.W) * wk.W, Kp = ceil_div(p.K, P) * P;
  // Super-blocks of S tiles, as many as fit kBlockBytes but at least one per thread,
  // their count a multiple of the threads' (blocks of equal size keep both cores busy to
  // the end).
  const std::int64_t fit = std::max(R, kBlockBytes / (36 * 4 * (Cp + Kp)) / R * R);
  const std::int64_t slots = std::min<std::int64_t>(get_num_threads(), ceil_div(T, R));
  const std::int64_t blocks = ceil_div(ceil_div(T, fit), slots) * slots;
  const std::int64_t S = ceil_div(ceil_div(T, blocks), R) * R;
  const bool in_place = p.layout == Layout::NHWC && Cp == p.C;

  Workspace ws;
  const auto U_at = ws.add<float>(buffer_size({36, p.C, Kp}));
  const auto wt_at = ws.add<float>(buffer_size({9, p.C, Kp}));
  const auto bias_at = ws.add<float>(bias ? Kp : 0);
  const auto x_at = ws.add<float>(in_place ? 0 : buffer_size({p.N, p.H, p.W, Cp}));
  const auto zero_at = ws.add<float>(Cp);
  const auto V_at = ws.add<float>(buffer_size({slots, 36, S, Cp}));
  const auto M_at = ws.add<float>(buffer_size({slots, 36, S, Kp}));
  ws.allocate();
  float* zeros = ws.at<float>(zero_at);
  std::fill(zeros, zeros + Cp, 0.0f);

  // 1. Weights (the k padding zero: the products there are zeros, never stored): cached,
  // or transformed into a new cache entry (weights seen before) or the workspace.
  const std::int64_t wK = rotated ? p.C : p.K, wC = rotated ? p.K : p.C;
  const WeightKey key{w, buffer_size({wK, wC, 9}), Kp, rotated, active_isa()};
  bool seen = false;
  std::shared_ptr<const TransformedWeights> cached = weight_cache().find(key, &seen);
  const float* U = cached ? cached->U.data() : nullptr;
  if (!cached) {
    float* dst = ws.at<float>(U_at);
    if (seen) {
      auto e = std::make_shared<TransformedWeights>();
      e->key = key;
      e->raw.assign(w, w + key.n);
      e->U.resize(static_cast<std::size_t>(buffer_size({36, p.C, Kp})));
      dst = e->U.data();
      cached = e;
    }
    transform_weights(wk, ks, w, wK, wC, rotated, ws.at<float>(wt_at), dst, Kp);
    if (seen) weight_cache().add(cached);
    U = dst;
  }
  float* b = nullptr;
  if (bias) {
    b = ws.at<float>(bias_at);
    std::copy(bias, bias + p.K, b);
    std::fill(b + p.K, b + Kp, 0.0f);
  }

  // 2. Channels-last input, channels padded to Cp with zeros.
  const std::int64_t HW = p.H * p.W;
  const float* xin = x;
  if (!in_place) {
    float* xp = ws.at<float>(x_at);
    constexpr std::int64_t kChunk = 1024;  // pixels per packing task
    const std::int64_t chunks = ceil_div(HW, kChunk);
    parallel_for(p.N * chunks, [&](std::int64_t task) {
      const std::int64_t n = task / chunks, p0 = task % chunks * kChunk, cnt = std::min(kChunk, HW - p0);
      float* dst = xp + (n * HW + p0) * Cp;
      if (p.layout == Layout::NCHW)
        ks.transpose(x + n * p.C * HW + p0, HW, dst, Cp, p.C, cnt);
      else
        for (std::int64_t i = 0; i < cnt; ++i) std::copy_n(x + (n * HW + p0 + i) * p.C, p.C, dst + i * Cp);
      for (std::int64_t i = 0; i < cnt; ++i) std::fill(dst + i * Cp + p.C, dst + (i + 1) * Cp, 0.0f);
    });
    xin = xp;
  }

  std::vector<Entry> ent(static_cast<std::size_t>(p.C));
  for (std::int64_t c = 0; c < p.C; ++c) ent[static_cast<std::size_t>(c)] = {c * Kp, c};
  const ActStrides ys = act_strides(p.layout, p.K, p.OH, p.OW);

  // 3. One task per thread slot, each taking super-blocks from a shared counter until
  // none is left: the three passes of a block run back to back on one core, V and M
  // staying in its L2, with no barrier between them (a barrier per pass cost more than
  // the passes on small layers). Taken, not dealt out in turn: a thread that another
  // process holds off its core for a while leaves its blocks to the other instead of
  // making it wait at the end (one measurement, a 0.5 ms time slice taken every 10 ms:
  // the ResNet block's 3x3 64 forward at 2 threads 5.2 ms dealt out, 4.6-5.0 taken, 3.7-
  // 4.3 undisturbed; PyTorch's unchanged). A block's results do not depend on which slot
  // computes it.
  std::atomic<std::int64_t> next_block{0};
  parallel_for(slots, [&](std::int64_t slot) {
    float* V = ws.at<float>(V_at) + slot * 36 * S * Cp;
    float* M = ws.at<float>(M_at) + slot * 36 * S * Kp;
    for (std::int64_t t0; (t0 = next_block.fetch_add(1, std::memory_order_relaxed) * S) < T;) {
      const std::int64_t nt = std::min(S, T - t0);
      // 3a. Input transform.
      const float* src[36];
      for (std::int64_t s = 0; s < nt; ++s) {
        const Tile& tl = tiles[static_cast<std::size_t>(t0 + s)];
        for (int i = 0; i < 6; ++i) {
          const std::int64_t iy = tl.oy0 + p.top + i * p.dh;
          for (int j = 0; j < 6; ++j) {
            const std::int64_t ix = tl.ox0 + p.left + j * p.dw;
            const bool inside = iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
            src[6 * i + j] = inside ? xin + ((tl.n * p.H + iy) * p.W + ix) * Cp : zeros;
          }
        }
        wk.input(src, Cp, V + s * Cp, S * Cp);
      }
      // 3b. One product per position: M[q] = V[q] U[q], tiles in groups of R, output
      // channels in runs of P (U's runs stay in L1 across the tile groups).
      const std::int64_t groups = ceil_div(nt, R);
      for (std::int64_t q = 0; q < 36; ++q)
        for (std::int64_t k0 = 0; k0 < Kp; k0 += P)
          for (std::int64_t tg = 0; tg < groups; ++tg) {
            const std::int64_t s0 = tg * R;
            const OutMap<float> out{M + (q * S + s0) * Kp, Kp, 0, 1, 1, Kp, Kp};
            const DirectTile<float> tile{U + q * p.C * Kp + k0, ent.data(), p.C, V + (q * S + s0) * Cp, Cp, nullptr,
                                         false, static_cast<int>(std::min(R, nt - s0)), 0, k0, out};
            kern.tile.back()(tile);
          }
      // 3c. Output transform, bias and ReLU into y.
      float* dst[16];
      for (std::int64_t s = 0; s < nt; ++s) {
        const Tile& tl = tiles[static_cast<std::size_t>(t0 + s)];
        for (int a = 0; a < 4; ++a)
          for (int bb = 0; bb < 4; ++bb) {
            const std::int64_t oy = tl.oy0 + a * p.dh, ox = tl.ox0 + bb * p.dw;
            dst[4 * a + bb] = oy < p.OH && ox < p.OW ? y + tl.n * ys.n + oy * ys.h + ox * ys.w : nullptr;
          }
        wk.output(M + s * Kp, S * Kp, p.K, b, relu, dst, ys.c);
      }
    }
  });
}

}  // namespace

void winograd_forward(const ConvGeom& g, Layout layout, const float* x, const float* w, const float* bias, bool relu,
                      float* y) {
  run({g.N, g.C, g.H, g.W, g.K, g.OH, g.OW, -g.pt, -g.pl, g.dh, g.dw, layout}, x, w, false, bias, relu, y);
}

// grad_x(h, w) = sum over k, i, j of grad_y(h + pt - i*dh, w + pl - j*dw) w[k][c][i][j]:
// with i' = 2 - i, a correlation reading grad_y at h + (pt - 2*dh) + i'*dh, so top =
// pt - 2*dh (positive when the padding exceeds the kernel's reach: those grad_y rows
// are skipped, as the bounds test treats any offset alike).
void winograd_grad_input(const ConvGeom& g, Layout layout, const float* gy, const float* w, float* gx) {
  run({g.N, g.K, g.OH, g.OW, g.C, g.H, g.W, g.pt - 2 * g.dh, g.pl - 2 * g.dw, g.dh, g.dw, layout}, gy, w, true,
      nullptr, false, gx);
}

}  // namespace convkit
