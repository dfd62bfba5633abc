// Vector traits for the portable kernels: a "vector" of one element of any float type.
// The tile templates (conv_tiles.h) are written once over a traits struct; with W = 1
// they become plain C++ loops that the compiler may still vectorise for the baseline ISA.
#pragma once
#include <cstdint>

namespace convkit {

template <typename T>
struct VecScalar {
  using Elem = T;
  using Vec = T;
  static constexpr int W = 1;
  static constexpr const char* isa = "scalar";

  static Vec zero() { return T(0); }
  static Vec set1(T x) { return x; }
  static Vec loadu(const T* p) { return *p; }
  static Vec load(const T* p) { return *p; }
  static void storeu(T* p, Vec v) { *p = v; }
  static Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
  // ReLU that keeps NaN: x > 0 is false for NaN, so test for it explicitly.
  static Vec relu(Vec x) { return x > T(0) || x != x ? x : T(0); }
  // Lanes [a, a + n) of v to dst[0, n): with one lane, a == 0 and n == 1.
  static void store_lanes(T* dst, Vec v, int, int) { *dst = v; }
  static void transpose_block(const T* src, std::int64_t, T* dst, std::int64_t) { *dst = *src; }
};

}  // namespace convkit
