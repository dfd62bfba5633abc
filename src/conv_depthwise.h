// Depthwise convolution (groups == C, one input channel per group, K = C * multiplier):
// its own kernels, because with one input channel per output channel there is no
// channel reduction to block over and the dense engine's register tiles would sit idle.
// NCHW vectorises over pixels (conv_depthwise.cpp), NHWC over channels
// (conv_depthwise_nhwc.cpp, float32; float64 NHWC stays with the direct engine).
#pragma once
#include <type_traits>

#include "conv_geometry.h"
#include "conv_layout.h"

namespace convkit {

inline bool is_depthwise(const ConvGeom& g) { return g.groups == g.C && g.groups > 1; }

// Whether the depthwise operators take a call of the direct engine's.
template <typename T>
bool depthwise_handles(const ConvGeom& g, Layout layout) {
  return is_depthwise(g) && (layout == Layout::NCHW || std::is_same_v<T, float>);
}

template <typename T>
void depthwise_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y);
template <typename T>
void depthwise_grad_input(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx);
template <typename T>
void depthwise_grad_weight(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw);

// The NHWC float32 operators behind the three above.
void depthwise_forward_nhwc(const ConvGeom& g, const float* x, const float* w, const float* bias, bool relu,
                            float* y);
void depthwise_grad_input_nhwc(const ConvGeom& g, const float* gy, const float* w, float* gx);
void depthwise_grad_weight_nhwc(const ConvGeom& g, const float* gy, const float* x, float* gw);

}  // namespace convkit
