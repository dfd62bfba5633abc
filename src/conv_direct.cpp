// The convolution operators: depthwise layers go to their own kernels
// (conv_depthwise.h), geometries whose planes would be mostly padding or empty phases
// (a stride or padding that dwarfs the image, planes_pay_off) to the plain loops of
// conv_reference_loops.h; everything else runs on the direct engine, whose every
// convolution becomes flat-domain correlations over padded, stride-phase-split or
// folded planes (conv_planes.h, conv_direct_planes.h):
//   forward      per (image, group): the input's planes, taps at their offsets
//                (conv_direct_forward.cpp);
//   grad-input   per (image, group, output phase): grad_output's planes, the phase's
//                taps reversed (conv_direct_grad_input.cpp);
//   grad-weight  outer products of packed grad_output with the input's planes
//                (conv_direct_grad_weight.cpp).
// The planes are the only copy of an activation, made once per call into one workspace.
#include "conv_direct.h"

#include "conv_depthwise.h"
#include "conv_direct_planes.h"
#include "conv_reference_loops.h"

namespace convkit {

template <typename T>
void conv2d_forward(const ConvGeom& g, Layout layout, const T* x, const T* w, const T* bias, bool relu, T* y) {
  if (depthwise_handles<T>(g, layout)) return depthwise_forward(g, layout, x, w, bias, relu, y);
  if (!planes_pay_off(g)) return conv2d_forward_loops(g, layout, x, w, bias, relu, y);
  direct_forward(g, layout, x, w, bias, relu, y);
}
template <typename T>
void conv2d_grad_input(const ConvGeom& g, Layout layout, const T* gy, const T* w, T* gx) {
  if (depthwise_handles<T>(g, layout)) return depthwise_grad_input(g, layout, gy, w, gx);
  if (!planes_pay_off(g)) return conv2d_grad_input_loops(g, layout, gy, w, gx);
  direct_grad_input(g, layout, gy, w, gx);
}
template <typename T>
void conv2d_grad_weight(const ConvGeom& g, Layout layout, const T* gy, const T* x, T* gw) {
  if (depthwise_handles<T>(g, layout)) return depthwise_grad_weight(g, layout, gy, x, gw);
  if (!planes_pay_off(g)) return conv2d_grad_weight_loops(g, layout, gy, x, gw);
  direct_grad_weight(g, layout, gy, x, gw);
}

#define CONVKIT_INSTANTIATE(T)                                                                                  \
  template void conv2d_forward<T>(const ConvGeom&, Layout, const T*, const T*, const T*, bool, T*);            \
  template void conv2d_grad_input<T>(const ConvGeom&, Layout, const T*, const T*, T*);                          \
  template void conv2d_grad_weight<T>(const ConvGeom&, Layout, const T*, const T*, T*);
CONVKIT_INSTANTIATE(float)
CONVKIT_INSTANTIATE(double)
#undef CONVKIT_INSTANTIATE

}  // namespace convkit
