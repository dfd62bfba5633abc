// Depthwise microkernels, portable C++: "vectors" of 8 floats as plain arrays, which the
// compiler maps onto whatever SIMD the baseline target has (SSE2 on x86-64, NEON on arm64).
#include "f32_dwconv_body.h"

namespace convkit {
namespace {

struct Scalar {
  static constexpr int W = 8, tile = 4, nhwc_tile = 4, nhwc_3x3_tile = 4, gw_taps = 8;
  struct Vec {
    float v[W];
  };

  static Vec set1(float x) {
    Vec r;
    for (int l = 0; l < W; ++l) r.v[l] = x;
    return r;
  }
  static Vec loadu(const float* p) {
    Vec r;
    for (int l = 0; l < W; ++l) r.v[l] = p[l];
    return r;
  }
  static Vec fma(const Vec& a, const Vec& b, Vec c) {
    for (int l = 0; l < W; ++l) c.v[l] += a.v[l] * b.v[l];
    return c;
  }
  static Vec relu(Vec a) {  // NaN passes through: NaN < 0 is false
    for (int l = 0; l < W; ++l) a.v[l] = a.v[l] < 0.0f ? 0.0f : a.v[l];
    return a;
  }
  static void pin(Vec&) {}
  struct Mask {
    int lo, hi;
  };
  static Mask range_mask(int lo, int hi) { return {lo, hi}; }
  static Vec load_masked(const float* p, Mask m) {
    Vec r = set1(0.0f);
    for (int l = m.lo; l < m.hi; ++l) r.v[l] = p[l];
    return r;
  }
  static Vec load_lanes(const float* p, int n) { return load_masked(p, range_mask(0, n)); }
  // No streaming stores in portable C++: plain ones.
  static bool stream_aligned(const float*) { return true; }
  static void stream(float* p, const Vec& v) { storeu(p, v); }
  static void stream_fence() {}
  static Vec evens(const Vec& a, const Vec& b) {
    Vec r;
    for (int l = 0; l < W / 2; ++l) r.v[l] = a.v[2 * l], r.v[W / 2 + l] = b.v[2 * l];
    return r;
  }
  static Vec odds(const Vec& a, const Vec& b) {
    Vec r;
    for (int l = 0; l < W / 2; ++l) r.v[l] = a.v[2 * l + 1], r.v[W / 2 + l] = b.v[2 * l + 1];
    return r;
  }
  static Vec interleave_lo(const Vec& a, const Vec& b) {
    Vec r;
    for (int l = 0; l < W / 2; ++l) r.v[2 * l] = a.v[l], r.v[2 * l + 1] = b.v[l];
    return r;
  }
  static Vec interleave_hi(const Vec& a, const Vec& b) {
    Vec r;
    for (int l = 0; l < W / 2; ++l) r.v[2 * l] = a.v[W / 2 + l], r.v[2 * l + 1] = b.v[W / 2 + l];
    return r;
  }
  static Vec shift1(const Vec& a, const Vec& b) {
    Vec r;
    for (int l = 0; l + 1 < W; ++l) r.v[l] = a.v[l + 1];
    r.v[W - 1] = b.v[0];
    return r;
  }
  static void storeu(float* p, const Vec& a) { store_lanes(p, a, 0, W); }
  static void store_lanes(float* dst, const Vec& a, int first, int n) {
    for (int l = 0; l < n; ++l) dst[l] = a.v[first + l];
  }
  static void store(float* out, const Vec& a, const DwStore& s) {
    float* dst = out + s.dst;
    for (int l = 0; l < W; ++l)
      if (s.keep >> l & 1) *dst++ = a.v[l];
  }
  static float sum(const Vec& a) {
    float r = 0.0f;
    for (int l = 0; l < W; ++l) r += a.v[l];
    return r;
  }
};

}  // namespace

const DwKernels f32_dwconv_4x8__scalar = dwconv_kernels<Scalar>();

}  // namespace convkit
