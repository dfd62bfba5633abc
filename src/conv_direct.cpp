#include "conv_direct.h"

#include "conv_depthwise.h"
#include "conv_reference_loops.h"

namespace convkit {

template <typename T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, bool relu, T* y) {
  if (is_depthwise(g)) return depthwise_forward(g, x, w, bias, relu, y);
  conv2d_forward_loops(g, x, w, bias, relu, y);
}
template <typename T>
void conv2d_grad_input(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  if (is_depthwise(g)) return depthwise_grad_input(g, gy, w, gx);
  conv2d_grad_input_loops(g, gy, w, gx);
}
template <typename T>
void conv2d_grad_weight(const ConvGeom& g, const T* gy, const T* x, T* gw) {
  if (is_depthwise(g)) return depthwise_grad_weight(g, gy, x, gw);
  conv2d_grad_weight_loops(g, gy, x, gw);
}

#define CONVKIT_INSTANTIATE(T)                                                                 \
  template void conv2d_forward<T>(const ConvGeom&, const T*, const T*, const T*, bool, T*); \
  template void conv2d_grad_input<T>(const ConvGeom&, const T*, const T*, T*);             \
  template void conv2d_grad_weight<T>(const ConvGeom&, const T*, const T*, T*);
CONVKIT_INSTANTIATE(float)
CONVKIT_INSTANTIATE(double)
#undef CONVKIT_INSTANTIATE

}  // namespace convkit
