// Python bindings of the convolution operators (conv2d forward / grad-input /
// grad-weight; conv_transpose2d is composed from these in Python).
//
// Arrays arrive C-contiguous with an exact dtype (noconvert: a wrong dtype is refused,
// never silently copied), in layout "NCHW" or "NHWC". Shapes are checked again here so that no call from Python,
// however wrong, can make a kernel read or write out of bounds. The GIL is released
// around every kernel.
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "conv_direct.h"
#include "conv_tile.h"
#include "conv_winograd.h"

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

Layout parse_layout(const std::string& s) {
  if (s == "NCHW") return Layout::NCHW;
  if (s == "NHWC") return Layout::NHWC;
  throw std::invalid_argument("layout must be 'NCHW' or 'NHWC', got '" + s + "'");
}

// An activation's NCHW sizes, whatever its layout.
struct Nchw {
  std::int64_t N, C, H, W;
};
Nchw nchw(const py::array& a, const char* name, Layout layout) {
  require_4d(a, name);
  if (layout == Layout::NHWC) return {a.shape(0), a.shape(3), a.shape(1), a.shape(2)};
  return {a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
}

// The shape of an activation of NCHW sizes (n, c, h, w) in `layout`.
std::vector<py::ssize_t> act_shape(Layout layout, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
  if (layout == Layout::NHWC) return {n, h, w, c};
  return {n, c, h, w};
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

Quad shape4(const py::array& w) {
  require_4d(w, "weight");
  return {w.shape(0), w.shape(1), w.shape(2), w.shape(3)};
}

void require_shape(const py::array& a, const char* name, const std::vector<py::ssize_t>& want) {
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
                 std::int64_t groups, bool relu, const std::string& layout_name) {
  const Layout layout = parse_layout(layout_name);
  const Nchw s = nchw(x, "input", layout);
  ConvGeom g = geometry(s.N, s.C, s.H, s.W, shape4(w), stride, pad, dil, groups);
  if (bias) require_shape(*bias, "bias", {g.K});
  Array<T> y(act_shape(layout, g.N, g.K, g.OH, g.OW));
  const T* b = bias ? bias->data() : nullptr;
  {
    py::gil_scoped_release release;
    conv2d_forward<T>(g, layout, x.data(), w.data(), b, relu, y.mutable_data());
  }
  return y;
}

template <typename T>
Array<T> grad_input(Array<T> gy, Array<T> w, Pair input_hw, Pair stride, Quad pad, Pair dil, std::int64_t groups,
                    const std::string& layout_name) {
  const Layout layout = parse_layout(layout_name);
  const Nchw s = nchw(gy, "grad_output", layout);
  require_4d(w, "weight");
  require_below_2_31("groups", {groups});
  ConvGeom g = geometry(s.N, w.shape(1) * groups, input_hw.first, input_hw.second, shape4(w), stride, pad, dil,
                        groups);
  require_shape(gy, "grad_output", act_shape(layout, g.N, g.K, g.OH, g.OW));
  Array<T> gx(act_shape(layout, g.N, g.C, g.H, g.W));
  {
    py::gil_scoped_release release;
    conv2d_grad_input<T>(g, layout, gy.data(), w.data(), gx.mutable_data());
  }
  return gx;
}

template <typename T>
Array<T> grad_weight(Array<T> gy, Array<T> x, Pair kernel_hw, Pair stride, Quad pad, Pair dil, std::int64_t groups,
                     const std::string& layout_name) {
  const Layout layout = parse_layout(layout_name);
  const Nchw gs = nchw(gy, "grad_output", layout), s = nchw(x, "input", layout);
  if (groups <= 0) throw std::invalid_argument("groups must be > 0");
  if (s.C % groups) throw std::invalid_argument("groups must divide C = " + std::to_string(s.C));
  ConvGeom g = geometry(s.N, s.C, s.H, s.W, {gs.C, s.C / groups, kernel_hw.first, kernel_hw.second}, stride, pad,
                        dil, groups);
  require_shape(gy, "grad_output", act_shape(layout, g.N, g.K, g.OH, g.OW));
  Array<T> gw({g.K, g.Cg(), g.kh, g.kw});
  {
    py::gil_scoped_release release;
    conv2d_grad_weight<T>(g, layout, gy.data(), x.data(), gw.mutable_data());
  }
  return gw;
}

// algo="winograd" (float32 only): the geometry must be one the operators cover.
void require_winograd(const ConvGeom& g) {
  if (!winograd_covers(g))
    throw std::invalid_argument(
        "winograd needs groups == 1, dilation only at stride 1, and at most 3 taps per stride phase "
        "(kernel <= 3 * stride), got kernel (" + std::to_string(g.kh) + ", " + std::to_string(g.kw) +
        "), stride (" + std::to_string(g.sh) + ", " + std::to_string(g.sw) + "), padding (" + std::to_string(g.pt) +
        ", " + std::to_string(g.pl) + "), dilation (" + std::to_string(g.dh) + ", " + std::to_string(g.dw) +
        "), groups " + std::to_string(g.groups));
}

Array<float> winograd_forward_f32(Array<float> x, Array<float> w, std::optional<Array<float>> bias, Pair stride,
                                  Quad pad, Pair dil, bool relu, const std::string& layout_name) {
  const Layout layout = parse_layout(layout_name);
  const Nchw s = nchw(x, "input", layout);
  ConvGeom g = geometry(s.N, s.C, s.H, s.W, shape4(w), stride, pad, dil, 1);
  require_winograd(g);
  if (bias) require_shape(*bias, "bias", {g.K});
  Array<float> y(act_shape(layout, g.N, g.K, g.OH, g.OW));
  const float* b = bias ? bias->data() : nullptr;
  {
    py::gil_scoped_release release;
    winograd_forward(g, layout, x.data(), w.data(), b, relu, y.mutable_data());
  }
  return y;
}

Array<float> winograd_grad_input_f32(Array<float> gy, Array<float> w, Pair input_hw, Pair stride, Quad pad,
                                     Pair dil, const std::string& layout_name) {
  const Layout layout = parse_layout(layout_name);
  const Nchw s = nchw(gy, "grad_output", layout);
  require_4d(w, "weight");
  ConvGeom g = geometry(s.N, w.shape(1), input_hw.first, input_hw.second, shape4(w), stride, pad, dil, 1);
  require_winograd(g);
  require_shape(gy, "grad_output", act_shape(layout, g.N, g.K, g.OH, g.OW));
  Array<float> gx(act_shape(layout, g.N, g.C, g.H, g.W));
  {
    py::gil_scoped_release release;
    winograd_grad_input(g, layout, gy.data(), w.data(), gx.mutable_data());
  }
  return gx;
}

Array<float> winograd_grad_weight_f32(Array<float> gy, Array<float> x, Pair kernel_hw, Pair stride, Quad pad,
                                      Pair dil, const std::string& layout_name) {
  const Layout layout = parse_layout(layout_name);
  const Nchw gs = nchw(gy, "grad_output", layout), s = nchw(x, "input", layout);
  ConvGeom g = geometry(s.N, s.C, s.H, s.W, {gs.C, s.C, kernel_hw.first, kernel_hw.second}, stride, pad, dil, 1);
  require_winograd(g);
  require_shape(gy, "grad_output", act_shape(layout, g.N, g.K, g.OH, g.OW));
  Array<float> gw({g.K, g.C, g.kh, g.kw});
  {
    py::gil_scoped_release release;
    winograd_grad_weight(g, layout, gy.data(), x.data(), gw.mutable_data());
  }
  return gw;
}

template <typename T>
void bind_dtype(py::module_& m) {
  m.def("conv2d_forward", &forward<T>, py::arg("x").noconvert(), py::arg("weight").noconvert(),
        py::arg("bias").noconvert() = py::none(), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("relu") = false, py::arg("layout") = "NCHW",
        R"doc(y = conv2d(x, weight) + bias, optionally ReLU'd; padding is (top, bottom, left, right).)doc");
  m.def("conv2d_grad_input", &grad_input<T>, py::arg("grad_output").noconvert(), py::arg("weight").noconvert(),
        py::arg("input_hw"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        py::arg("layout") = "NCHW", R"doc(Gradient of conv2d with respect to its input of spatial size input_hw.)doc");
  m.def("conv2d_grad_weight", &grad_weight<T>, py::arg("grad_output").noconvert(), py::arg("x").noconvert(),
        py::arg("kernel_hw"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        py::arg("layout") = "NCHW",
        R"doc(Gradient of conv2d with respect to its weight of spatial size kernel_hw.)doc");
}

// dst[c*dst_ld + r] = src[r*src_ld + c], rows x cols, with the active ISA's kernel.
template <typename T>
void transpose_active(const T* src, std::int64_t src_ld, T* dst, std::int64_t dst_ld, std::int64_t rows,
                      std::int64_t cols) {
  conv_kernels<T>().transpose(src, src_ld, dst, dst_ld, rows, cols);
}

// The direct engine's kernels for the active ISA: what tests walk the tile edges of.
template <typename T>
py::list kernel_list() {
  py::list out;
  const ConvKernels<T>& ks = conv_kernels<T>();
  for (const auto& k : ks.direct)
    out.append(py::dict(py::arg("name") = k.name, py::arg("R") = k.R, py::arg("P") = k.P));
  for (const auto& k : ks.gw) out.append(py::dict(py::arg("name") = k.name, py::arg("R") = k.R, py::arg("KB") = k.KB));
  return out;
}

}  // namespace

void bind_conv(py::module_& m) {
  bind_dtype<float>(m);
  bind_dtype<double>(m);
  m.def("winograd_conv2d_forward", &winograd_forward_f32, py::arg("x").noconvert(), py::arg("weight").noconvert(),
        py::arg("bias").noconvert() = py::none(), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("relu") = false, py::arg("layout") = "NCHW",
        R"doc(float32 conv2d by Winograd F(4x4, 3x3) over stride phases: kernel <= 3 * stride, groups 1; padding (top, bottom, left, right).)doc");
  m.def("winograd_conv2d_grad_input", &winograd_grad_input_f32, py::arg("grad_output").noconvert(),
        py::arg("weight").noconvert(), py::arg("input_hw"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("layout") = "NCHW",
        R"doc(float32 grad-input of a conv2d by Winograd F(4x4, 3x3) over stride phases.)doc");
  m.def("winograd_conv2d_grad_weight", &winograd_grad_weight_f32, py::arg("grad_output").noconvert(),
        py::arg("x").noconvert(), py::arg("kernel_hw"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("layout") = "NCHW",
        R"doc(float32 grad-weight of a conv2d by Winograd F(3x3, 4x4) over the forward's tiles and stride phases.)doc");
  m.def("conv_kernels", [](const std::string& dtype) {
    if (dtype == "float32") return kernel_list<float>();
    if (dtype == "float64") return kernel_list<double>();
    throw std::invalid_argument("dtype must be 'float32' or 'float64', got '" + dtype + "'");
  }, py::arg("dtype"), R"doc(The direct engine's microkernels (name, tile shape) for the active ISA.)doc");
  // The SIMD transpose of the active ISA, for convkit._im2col's column and output
  // reorders (a C function pointer in a capsule: called without the GIL, no Python in
  // between; the ISA is looked up at each call, as set_isa may change it).
  m.attr("transpose_f32") = py::capsule(reinterpret_cast<void*>(&transpose_active<float>), "convkit.transpose_f32");
  m.attr("transpose_f64") = py::capsule(reinterpret_cast<void*>(&transpose_active<double>), "convkit.transpose_f64");
  m.def("force_conv_kernels", &force_conv_kernels, py::arg("direct") = "", py::arg("gw") = "", py::arg("fold") = -1,
        R"doc(Tests only: use these kernels (by name) and input layout (fold 0/1) instead of the cost
model's choice; "" and -1 restore it.)doc");
}

}  // namespace convkit
