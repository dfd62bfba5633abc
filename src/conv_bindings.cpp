// Python bindings of the convolution operators (conv2d forward / grad-input /
// grad-weight; conv_transpose2d is composed from these in Python).
//
// Arrays arrive C-contiguous with an exact dtype (noconvert: a wrong dtype is refused,
// never silently copied). Shapes are checked again here so that no call from Python,
// however wrong, can make a kernel read or write out of bounds. The GIL is released
// around every kernel.
#include <optional>
#include <stdexcept>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "conv_direct.h"

namespace py = pybind11;

namespace convkit {
namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;
using Pair = std::pair<std::int64_t, std::int64_t>;
using Quad = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void require_4d(const py::array& a, const char* name) {
  if (a.ndim() != 4)
    throw std::invalid_argument(std::string(name) + " must be 4-D, got shape " + shape_str(a));
}

// Every spatial size and parameter below 2^31 (C++ reads them as int64): then no sum or
// product in ConvGeom::finalize or in the kernels' index arithmetic can overflow (a
// dilated kernel extent stays below 2^62), so a huge dilation or padding is refused
// instead of wrapping around into a wrong "valid" geometry.
constexpr std::int64_t kMaxParam = (std::int64_t{1} << 31) - 1;

void require_below_2_31(const char* name, std::initializer_list<std::int64_t> values) {
  for (auto v : values)
    if (v > kMaxParam) throw std::invalid_argument(std::string(name) + " must be < 2^31, got " + std::to_string(v));
}

// weight_shape is (K, C/groups, kh, kw), given as numbers so that grad_weight can check
// the geometry before it allocates a weight-shaped result.
ConvGeom geometry(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, Quad weight_shape, Pair stride,
                  Quad pad, Pair dil, std::int64_t groups) {
  const auto [K, Cg, kh, kw] = weight_shape;
  const auto [pt, pb, pl, pr] = pad;
  require_below_2_31("input height and width", {H, W});
  require_below_2_31("kernel height and width", {kh, kw});
  require_below_2_31("stride", {stride.first, stride.second});
  require_below_2_31("padding", {pt, pb, pl, pr});
  require_below_2_31("dilation", {dil.first, dil.second});
  require_below_2_31("groups", {groups});
  ConvGeom g{N, C, H, W, K, kh, kw, stride.first, stride.second, pt, pb, pl, pr, dil.first, dil.second, groups, 0, 0};
  g.finalize();
  if (Cg * groups != C)
    throw std::invalid_argument("weight shape (" + std::to_string(K) + ", " + std::to_string(Cg) + ", " +
                                std::to_string(kh) + ", " + std::to_string(kw) + ") needs C/groups = " +
                                std::to_string(C / groups) + " input channels per group, input has C = " +
                                std::to_string(C));
  return g;
}

Quad shape4(const py::array& w) { return {w.shape(0), w.shape(1), w.shape(2), w.shape(3)}; }

void require_shape(const py::array& a, const char* name, std::initializer_list<std::int64_t> want) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  py::ssize_t i = 0;
  std::string ws = "(";
  for (auto v : want) {
    ok = ok && a.shape(i) == v;
    ws += (i ? ", " : "") + std::to_string(v);
    ++i;
  }
  if (!ok) throw std::invalid_argument(std::string(name) + " has shape " + shape_str(a) + ", expected " + ws + ")");
}

template <typename T>
Array<T> forward(Array<T> x, Array<T> w, std::optional<Array<T>> bias, Pair stride, Quad pad, Pair dil,
                 std::int64_t groups, bool relu) {
  require_4d(x, "input");
  require_4d(w, "weight");
  ConvGeom g = geometry(x.shape(0), x.shape(1), x.shape(2), x.shape(3), shape4(w), stride, pad, dil, groups);
  if (bias) require_shape(*bias, "bias", {g.K});
  Array<T> y({g.N, g.K, g.OH, g.OW});
  const T* b = bias ? bias->data() : nullptr;
  {
    py::gil_scoped_release release;
    conv2d_forward<T>(g, x.data(), w.data(), b, relu, y.mutable_data());
  }
  return y;
}

template <typename T>
Array<T> grad_input(Array<T> gy, Array<T> w, Pair input_hw, Pair stride, Quad pad, Pair dil, std::int64_t groups) {
  require_4d(gy, "grad_output");
  require_4d(w, "weight");
  require_below_2_31("groups", {groups});
  ConvGeom g = geometry(gy.shape(0), w.shape(1) * groups, input_hw.first, input_hw.second, shape4(w), stride, pad,
                        dil, groups);
  require_shape(gy, "grad_output", {g.N, g.K, g.OH, g.OW});
  Array<T> gx({g.N, g.C, g.H, g.W});
  {
    py::gil_scoped_release release;
    conv2d_grad_input<T>(g, gy.data(), w.data(), gx.mutable_data());
  }
  return gx;
}

template <typename T>
Array<T> grad_weight(Array<T> gy, Array<T> x, Pair kernel_hw, Pair stride, Quad pad, Pair dil, std::int64_t groups) {
  require_4d(gy, "grad_output");
  require_4d(x, "input");
  if (groups <= 0) throw std::invalid_argument("groups must be > 0");
  const std::int64_t C = x.shape(1);
  if (C % groups) throw std::invalid_argument("groups must divide C = " + std::to_string(C));
  ConvGeom g = geometry(x.shape(0), C, x.shape(2), x.shape(3),
                        {gy.shape(1), C / groups, kernel_hw.first, kernel_hw.second}, stride, pad, dil, groups);
  require_shape(gy, "grad_output", {g.N, g.K, g.OH, g.OW});
  Array<T> gw({g.K, C / groups, g.kh, g.kw});
  {
    py::gil_scoped_release release;
    conv2d_grad_weight<T>(g, gy.data(), x.data(), gw.mutable_data());
  }
  return gw;
}

template <typename T>
void bind_dtype(py::module_& m) {
  m.def("conv2d_forward", &forward<T>, py::arg("x").noconvert(), py::arg("weight").noconvert(),
        py::arg("bias").noconvert() = py::none(), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("relu") = false,
        R"doc(y = conv2d(x, weight) + bias, optionally ReLU'd; padding is (top, bottom, left, right).)doc");
  m.def("conv2d_grad_input", &grad_input<T>, py::arg("grad_output").noconvert(), py::arg("weight").noconvert(),
        py::arg("input_hw"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        R"doc(Gradient of conv2d with respect to its input of spatial size input_hw.)doc");
  m.def("conv2d_grad_weight", &grad_weight<T>, py::arg("grad_output").noconvert(), py::arg("x").noconvert(),
        py::arg("kernel_hw"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        R"doc(Gradient of conv2d with respect to its weight of spatial size kernel_hw.)doc");
}

}  // namespace

void bind_conv(py::module_& m) {
  bind_dtype<float>(m);
  bind_dtype<double>(m);
}

}  // namespace convkit
