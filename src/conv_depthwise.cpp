#include "conv_depthwise.h"

#include "conv_reference_loops.h"

namespace convkit {

template <typename T>
void depthwise_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, bool relu, T* y) {
  conv2d_forward_loops(g, x, w, bias, relu, y);
}
template <typename T>
void depthwise_grad_input(const ConvGeom& g, const T* gy, const T* w, T* gx) {
  conv2d_grad_input_loops(g, gy, w, gx);
}
template <typename T>
void depthwise_grad_weight(const ConvGeom& g, const T* gy, const T* x, T* gw) {
  conv2d_grad_weight_loops(g, gy, x, gw);
}

#define CONVKIT_INSTANTIATE(T)                                                                    \
  template void depthwise_forward<T>(const ConvGeom&, const T*, const T*, const T*, bool, T*); \
  template void depthwise_grad_input<T>(const ConvGeom&, const T*, const T*, T*);             \
  template void depthwise_grad_weight<T>(const ConvGeom&, const T*, const T*, T*);
CONVKIT_INSTANTIATE(float)
CONVKIT_INSTANTIATE(double)
#undef CONVKIT_INSTANTIATE

}  // namespace convkit
