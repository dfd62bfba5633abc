// Activation layouts: NCHW (PyTorch's) and NHWC (Keras'), as element strides. The
// direct engine reads and writes both natively: packing takes (row, col) strides and
// the output map takes (channel, row, col) strides, so no transposed copy is made.
#pragma once
#include <cstdint>

namespace convkit {

enum class Layout { NCHW, NHWC };

// Element strides of a tensor of NCHW sizes (N, C, H, W) stored in `layout`.
struct ActStrides {
  std::int64_t n, c, h, w;
};

inline ActStrides act_strides(Layout layout, std::int64_t C, std::int64_t H, std::int64_t W) {
  if (layout == Layout::NHWC) return {H * W * C, 1, W * C, C};
  return {C * H * W, H * W, W, 1};
}

}  // namespace convkit
