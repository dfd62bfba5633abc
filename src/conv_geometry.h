// The shape of one 2-D convolution, checked once, shared by every conv kernel.
//
// All sizes are int64: a tensor may hold more than 2^31 elements, and index arithmetic
// must not overflow. Padding is four-sided because padding="same" can be asymmetric.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace convkit {

struct ConvGeom {
  std::int64_t N, C, H, W;      // input (conv2d's x)
  std::int64_t K, kh, kw;       // weight (K, C/groups, kh, kw)
  std::int64_t sh, sw;          // stride
  std::int64_t pt, pb, pl, pr;  // padding: top, bottom, left, right
  std::int64_t dh, dw;          // dilation
  std::int64_t groups;
  std::int64_t OH, OW;          // output (conv2d's y)

  std::int64_t Cg() const { return C / groups; }  // input channels per group
  std::int64_t Kg() const { return K / groups; }  // output channels per group

  // Fills OH/OW and throws std::invalid_argument (ValueError in Python) on anything
  // the kernels could not compute safely.
  void finalize() {
    auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
    if (N < 0 || C <= 0 || H <= 0 || W <= 0 || K <= 0 || kh <= 0 || kw <= 0)
      fail("conv2d: sizes must be positive (C, H, W, K, kh, kw)");
    if (sh <= 0 || sw <= 0) fail("conv2d: stride must be > 0");
    if (dh <= 0 || dw <= 0) fail("conv2d: dilation must be > 0");
    if (pt < 0 || pb < 0 || pl < 0 || pr < 0) fail("conv2d: padding must be >= 0");
    if (groups <= 0 || C % groups || K % groups) fail("conv2d: groups must divide C and K");
    std::int64_t eh = dh * (kh - 1) + 1, ew = dw * (kw - 1) + 1;
    if (H + pt + pb < eh || W + pl + pr < ew) fail("conv2d: kernel larger than the padded input");
    OH = (H + pt + pb - eh) / sh + 1;
    OW = (W + pl + pr - ew) / sw + 1;
  }
};

}  // namespace convkit
