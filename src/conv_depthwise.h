// Depthwise convolution (groups == C, one input channel per group, K = C * multiplier):
// its own kernels, because with one input channel per output channel there is no
// channel reduction to block over and the dense engine's register tiles would sit idle.
#pragma once
#include "conv_geometry.h"

namespace convkit {

inline bool is_depthwise(const ConvGeom& g) { return g.groups == g.C && g.groups > 1; }

template <typename T>
void depthwise_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, bool relu, T* y);
template <typename T>
void depthwise_grad_input(const ConvGeom& g, const T* gy, const T* w, T* gx);
template <typename T>
void depthwise_grad_weight(const ConvGeom& g, const T* gy, const T* x, T* gw);

}  // namespace convkit
