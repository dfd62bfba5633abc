// The direct-convolution operators: pack the operands, pick a kernel for the geometry,
// dtype and ISA, and run it on the thread pool. Activations are NCHW or NHWC
// (C-contiguous in that layout); weights are (K, C/groups, kh, kw) in both.
#pragma once
#include "conv_geometry.h"
#include "conv_layout.h"

namespace convkit {

template <typename T>
void conv2d_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y);
template <typename T>
void conv2d_grad_input(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx);
template <typename T>
void conv2d_grad_weight(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw);

}  // namespace convkit
