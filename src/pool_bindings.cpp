// Python bindings of the pooling operators (max, average, maxout; forward and backward),
// float32 and float64, NCHW and NHWC.
//
// Arrays arrive C-contiguous with an exact dtype (noconvert: a wrong dtype or a strided
// array is refused, never silently copied). The geometry is checked again here (PoolGeom::
// finalize) and every array's shape against it, so that no call from Python, however
// wrong, can make a kernel read or write out of bounds. The GIL is released around every
// kernel.
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "pool.h"

namespace py = pybind11;

namespace convkit {
namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;
using Index = py::array_t<std::int64_t, py::array::c_style>;
using Pair = std::pair<std::int64_t, std::int64_t>;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + ")";
}

PoolLayout parse_layout(const std::string& layout) {
  if (layout == "NCHW") return PoolLayout::nchw;
  if (layout == "NHWC") return PoolLayout::nhwc;
  throw std::invalid_argument("layout must be 'NCHW' or 'NHWC', got '" + layout + "'");
}

// An array's (N, C, H, W) sizes whatever its layout.
struct Nchw {
  std::int64_t N, C, H, W;
};

Nchw sizes_of(const py::array& a, const char* name, PoolLayout layout) {
  if (a.ndim() != 4) throw std::invalid_argument(std::string(name) + " must be 4-D, got shape " + shape_str(a));
  if (layout == PoolLayout::nhwc) return {a.shape(0), a.shape(3), a.shape(1), a.shape(2)};
  return {a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
}

std::vector<py::ssize_t> shape_in(PoolLayout layout, Nchw s) {
  if (layout == PoolLayout::nhwc) return {s.N, s.H, s.W, s.C};
  return {s.N, s.C, s.H, s.W};
}

void require_shape(const py::array& a, const char* name, const std::vector<py::ssize_t>& want) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  for (std::size_t i = 0; ok && i < want.size(); ++i) ok = a.shape(i) == want[i];
  if (!ok) {
    std::string w = "(";
    for (std::size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
    throw std::invalid_argument(std::string(name) + " has shape " + shape_str(a) + ", expected " + w + ")");
  }
}

// avg_pool2d's divisor_override as PoolGeom keeps it: 0 for none, else checked > 0.
std::int64_t divisor(std::optional<std::int64_t> divisor_override) {
  if (divisor_override && *divisor_override <= 0)
    throw std::invalid_argument("divisor_override must be a positive int, got " + std::to_string(*divisor_override));
  return divisor_override.value_or(0);
}

// (The divisor is a plain int here: an empty std::optional defaulted in the max bindings
// let GCC test its unset payload, harmless but a branch on uninitialised memory to valgrind.)
PoolGeom geometry(Nchw s, Pair kernel, Pair stride, Pair padding, Pair dilation, bool ceil_mode,
                  bool count_include_pad = true, std::int64_t divisor_override = 0) {
  PoolGeom g{s.N, s.C, s.H, s.W, kernel.first, kernel.second, stride.first, stride.second,
             padding.first, padding.second, dilation.first, dilation.second, ceil_mode, count_include_pad,
             divisor_override, 0, 0};
  g.finalize();
  return g;
}

Nchw output_sizes(const PoolGeom& g) { return {g.N, g.C, g.OH, g.OW}; }

template <typename T>
py::tuple max_forward(Array<T> x, Pair kernel, Pair stride, Pair padding, Pair dilation, bool ceil_mode,
                      const std::string& layout_name, bool return_indices) {
  const PoolLayout layout = parse_layout(layout_name);
  const PoolGeom g = geometry(sizes_of(x, "input", layout), kernel, stride, padding, dilation, ceil_mode);
  const auto out_shape = shape_in(layout, output_sizes(g));
  Array<T> y(out_shape);
  std::optional<Index> idx;
  if (return_indices) idx.emplace(out_shape);
  {
    py::gil_scoped_release release;
    max_pool2d_forward<T>(g, layout, x.data(), y.mutable_data(), idx ? idx->mutable_data() : nullptr);
  }
  return py::make_tuple(y, idx ? py::object(*idx) : py::object(py::none()));
}

template <typename T>
Array<T> max_backward(Array<T> gy, Index idx, Pair input_hw, Pair kernel, Pair stride, Pair padding, Pair dilation,
                      bool ceil_mode, const std::string& layout_name) {
  const PoolLayout layout = parse_layout(layout_name);
  const Nchw s = sizes_of(gy, "grad_output", layout);
  const PoolGeom g = geometry({s.N, s.C, input_hw.first, input_hw.second}, kernel, stride, padding, dilation, ceil_mode);
  require_shape(gy, "grad_output", shape_in(layout, output_sizes(g)));
  require_shape(idx, "indices", shape_in(layout, output_sizes(g)));
  Array<T> gx(shape_in(layout, {g.N, g.C, g.H, g.W}));
  {
    py::gil_scoped_release release;
    max_pool2d_backward<T>(g, layout, gy.data(), idx.data(), gx.mutable_data());
  }
  return gx;
}

template <typename T>
Array<T> avg_forward(Array<T> x, Pair kernel, Pair stride, Pair padding, bool ceil_mode, bool count_include_pad,
                     std::optional<std::int64_t> divisor_override, const std::string& layout_name) {
  const PoolLayout layout = parse_layout(layout_name);
  const PoolGeom g = geometry(sizes_of(x, "input", layout), kernel, stride, padding, {1, 1}, ceil_mode,
                              count_include_pad, divisor(divisor_override));
  Array<T> y(shape_in(layout, output_sizes(g)));
  {
    py::gil_scoped_release release;
    avg_pool2d_forward<T>(g, layout, x.data(), y.mutable_data());
  }
  return y;
}

template <typename T>
Array<T> avg_backward(Array<T> gy, Pair input_hw, Pair kernel, Pair stride, Pair padding, bool ceil_mode,
                      bool count_include_pad, std::optional<std::int64_t> divisor_override,
                      const std::string& layout_name) {
  const PoolLayout layout = parse_layout(layout_name);
  const Nchw s = sizes_of(gy, "grad_output", layout);
  const PoolGeom g = geometry({s.N, s.C, input_hw.first, input_hw.second}, kernel, stride, padding, {1, 1},
                              ceil_mode, count_include_pad, divisor(divisor_override));
  require_shape(gy, "grad_output", shape_in(layout, output_sizes(g)));
  Array<T> gx(shape_in(layout, {g.N, g.C, g.H, g.W}));
  {
    py::gil_scoped_release release;
    avg_pool2d_backward<T>(g, layout, gy.data(), gx.mutable_data());
  }
  return gx;
}

Nchw maxout_sizes(const py::array& x, PoolLayout layout, std::int64_t k) {
  const Nchw s = sizes_of(x, "input", layout);
  if (s.C <= 0 || s.H <= 0 || s.W <= 0)
    throw std::invalid_argument("input must have non-empty C, H, W, got shape " + shape_str(x));
  if (k < 1 || s.C % k)
    throw std::invalid_argument("k must be a positive divisor of the channel count " + std::to_string(s.C) +
                                ", got k = " + std::to_string(k) + " (input shape " + shape_str(x) + ")");
  return s;
}

template <typename T>
Array<T> maxout_forward(Array<T> x, std::int64_t k, const std::string& layout_name) {
  const PoolLayout layout = parse_layout(layout_name);
  const Nchw s = maxout_sizes(x, layout, k);
  Array<T> y(shape_in(layout, {s.N, s.C / k, s.H, s.W}));
  {
    py::gil_scoped_release release;
    maxout2d_forward<T>(s.N, s.C, s.H, s.W, k, layout, x.data(), y.mutable_data());
  }
  return y;
}

template <typename T>
Array<T> maxout_backward(Array<T> gy, Array<T> x, std::int64_t k, const std::string& layout_name) {
  const PoolLayout layout = parse_layout(layout_name);
  const Nchw s = maxout_sizes(x, layout, k);
  require_shape(gy, "grad_output", shape_in(layout, {s.N, s.C / k, s.H, s.W}));
  Array<T> gx(shape_in(layout, s));
  {
    py::gil_scoped_release release;
    maxout2d_backward<T>(s.N, s.C, s.H, s.W, k, layout, gy.data(), x.data(), gx.mutable_data());
  }
  return gx;
}

template <typename T>
void bind_dtype(py::module_& m) {
  m.def("max_pool2d", &max_forward<T>, py::arg("x").noconvert(), py::arg("kernel_size"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("ceil_mode"), py::arg("layout"),
        py::arg("return_indices") = true,
        R"doc(Max pooling: (y, indices), indices int64 flat h*W + w within each plane (None if not asked for).)doc");
  m.def("max_pool2d_backward", &max_backward<T>, py::arg("grad_output").noconvert(), py::arg("indices").noconvert(),
        py::arg("input_hw"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("ceil_mode"), py::arg("layout"),
        R"doc(Gradient of max pooling: grad_output scattered to the indices, input of spatial size input_hw.)doc");
  m.def("avg_pool2d", &avg_forward<T>, py::arg("x").noconvert(), py::arg("kernel_size"), py::arg("stride"),
        py::arg("padding"), py::arg("ceil_mode"), py::arg("count_include_pad"), py::arg("divisor_override"),
        py::arg("layout"), R"doc(Average pooling with torch's divisor rules.)doc");
  m.def("avg_pool2d_backward", &avg_backward<T>, py::arg("grad_output").noconvert(), py::arg("input_hw"),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"),
        py::arg("count_include_pad"), py::arg("divisor_override"), py::arg("layout"),
        R"doc(Gradient of average pooling for an input of spatial size input_hw.)doc");
  m.def("maxout2d", &maxout_forward<T>, py::arg("x").noconvert(), py::arg("k"), py::arg("layout"),
        R"doc(Max over each group of k consecutive channels: (N, C, H, W) -> (N, C/k, H, W).)doc");
  m.def("maxout2d_backward", &maxout_backward<T>, py::arg("grad_output").noconvert(), py::arg("x").noconvert(),
        py::arg("k"), py::arg("layout"), R"doc(Gradient of maxout2d, its argmax recomputed from x.)doc");
}

}  // namespace

void bind_pool(py::module_& m) {
  bind_dtype<float>(m);
  bind_dtype<double>(m);
}

}  // namespace convkit
