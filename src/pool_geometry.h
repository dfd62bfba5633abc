// The shape of one pooling call, checked once, shared by every pooling kernel.
//
// Sizes are NCHW's whatever the memory layout. The rules are torch's: output length
// floor (or ceil) of (n + 2p - d*(k-1) - 1) / s, plus 1, and with ceil_mode the last
// window must start inside the input or the left padding; padding at most half the
// kernel; avg_pool2d's divisor as in torch (see avg_divisor).
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace convkit {

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); }
inline std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

inline std::int64_t pool_output_size(std::int64_t n, std::int64_t k, std::int64_t s, std::int64_t p, std::int64_t d,
                                     bool ceil_mode) {
  const std::int64_t span = n + 2 * p - d * (k - 1) - 1;
  std::int64_t out = (ceil_mode ? ceil_div(span, s) : floor_div(span, s)) + 1;
  if (ceil_mode && (out - 1) * s >= n + p) --out;  // the last window must start inside
  return out;
}

// [lo, hi): kernel taps t of output o whose input position o*s - p + t*d lies in [0, n).
struct Range {
  std::int64_t lo, hi;
  bool empty() const { return lo >= hi; }
};

inline Range valid_taps(std::int64_t o, std::int64_t n, std::int64_t k, std::int64_t s, std::int64_t p,
                        std::int64_t d) {
  const std::int64_t start = o * s - p;
  if (d == 1) {  // the common case, without divisions (edge columns call this per output)
    const std::int64_t lo = start >= 0 ? 0 : -start, hi = n - start < k ? n - start : k;
    return {lo, hi > lo ? hi : lo};
  }
  const std::int64_t lo = start >= 0 ? 0 : ceil_div(-start, d);
  std::int64_t hi = start > n - 1 ? 0 : (n - 1 - start) / d + 1;
  if (hi > k) hi = k;
  return {lo, hi > lo ? hi : lo};
}

// [lo, hi): outputs all of whose taps lie inside the input, so a kernel can run over
// them without bounds checks; the outputs before and after are the edges.
inline Range interior(std::int64_t n, std::int64_t k, std::int64_t s, std::int64_t p, std::int64_t d,
                      std::int64_t out) {
  std::int64_t lo = ceil_div(p, s);
  if (lo > out) lo = out;
  const std::int64_t last = n - 1 - (k - 1) * d + p;  // the largest in-bounds window start, plus p
  std::int64_t hi = last >= 0 ? last / s + 1 : 0;
  if (hi > out) hi = out;
  return {lo, hi > lo ? hi : lo};
}

// Outputs o whose window (dilation 1) covers input position i: [lo, hi).
inline Range covering_outputs(std::int64_t i, std::int64_t k, std::int64_t s, std::int64_t p, std::int64_t out) {
  std::int64_t lo = ceil_div(i + p - k + 1, s), hi = floor_div(i + p, s) + 1;
  if (lo < 0) lo = 0;
  if (hi > out) hi = out;
  return {lo, hi > lo ? hi : lo};
}

// avg_pool2d's divisor along one axis, as torch computes it: the window clipped to the
// padded input (count_include_pad) or to the input itself. The 2-D divisor is the
// product of the two axes' (or divisor_override).
inline std::int64_t avg_divisor(std::int64_t o, std::int64_t n, std::int64_t k, std::int64_t s, std::int64_t p,
                                bool count_include_pad) {
  const std::int64_t start = o * s - p;
  const std::int64_t end = start + k < n + p ? start + k : n + p;
  if (count_include_pad) return end - start;
  return (end < n ? end : n) - (start > 0 ? start : 0);
}

struct PoolGeom {
  std::int64_t N, C, H, W;  // input, NCHW sizes
  std::int64_t kh, kw;      // kernel
  std::int64_t sh, sw;      // stride
  std::int64_t ph, pw;      // padding, the same on both sides
  std::int64_t dh, dw;      // dilation (1 for average pooling)
  bool ceil_mode;
  bool count_include_pad;        // average pooling only
  std::int64_t divisor_override; // average pooling only; 0: none
  std::int64_t OH, OW;           // output, set by finalize()

  // Global pooling: one window covering the whole plane, read as one contiguous run.
  bool is_global() const { return kh == H && kw == W && ph == 0 && pw == 0 && dh == 1 && dw == 1; }

  // Checks every argument (std::invalid_argument, ValueError in Python, naming it) and
  // sets OH/OW: after this no kernel can read or write out of bounds.
  void finalize() {
    auto pair = [](std::int64_t a, std::int64_t b) { return "(" + std::to_string(a) + ", " + std::to_string(b) + ")"; };
    auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
    const std::string shape = " (input NCHW shape (" + std::to_string(N) + ", " + std::to_string(C) + ", " +
                              std::to_string(H) + ", " + std::to_string(W) + "))";
    if (N < 0 || C <= 0 || H <= 0 || W <= 0) fail("input must have non-empty C, H, W" + shape);
    if (kh <= 0 || kw <= 0) fail("kernel_size must be >= 1, got " + pair(kh, kw));
    if (sh <= 0 || sw <= 0) fail("stride must be >= 1, got " + pair(sh, sw));
    if (dh <= 0 || dw <= 0) fail("dilation must be >= 1, got " + pair(dh, dw));
    if (ph < 0 || pw < 0) fail("padding must be >= 0, got " + pair(ph, pw));
    // Below 2^31 like the conv bindings' parameters: then d*(k-1) < 2^62 and no size
    // computed from them overflows int64 (a hostile dilation or stride is refused, not wrapped).
    constexpr std::int64_t kMaxParam = (std::int64_t{1} << 31) - 1;
    if (std::max({kh, kw, sh, sw, dh, dw, ph, pw}) > kMaxParam)
      fail("kernel_size " + pair(kh, kw) + ", stride " + pair(sh, sw) + ", padding " + pair(ph, pw) +
           " and dilation " + pair(dh, dw) + " must be < 2^31");
    if (ph > kh / 2 || pw > kw / 2)
      fail("padding " + pair(ph, pw) + " must be at most half the kernel_size " + pair(kh, kw));
    if (divisor_override < 0) fail("divisor_override must be a positive int, got " + std::to_string(divisor_override));
    OH = pool_output_size(H, kh, sh, ph, dh, ceil_mode);
    OW = pool_output_size(W, kw, sw, pw, dw, ceil_mode);
    if (OH <= 0 || OW <= 0)
      fail("kernel_size " + pair(kh, kw) + " (dilation " + pair(dh, dw) + ") is larger than the padded input" +
           shape + ", padding " + pair(ph, pw));
  }
};

}  // namespace convkit
