"""algo="direct" on the CPU: the C++ kernels of convkit._cpu (see src/conv_direct.cpp).

The direct engine reads and writes NCHW and NHWC natively (its packing and output
stores take strides), so both layouts are declared and the API never transposes.
"""
from . import _cpu
from ._registry import register

_LAYOUTS = ("NCHW", "NHWC")


@register("conv2d_forward", "direct", layouts=_LAYOUTS)
def conv2d_forward(x, w, bias, geom, activation, layout):
    return _cpu.conv2d_forward(x, w, bias, geom.stride, geom.padding, geom.dilation, geom.groups,
                               activation == "relu", layout)


@register("conv2d_grad_input", "direct", layouts=_LAYOUTS)
def conv2d_grad_input(grad_y, w, geom, layout):
    return _cpu.conv2d_grad_input(grad_y, w, (geom.H, geom.W), geom.stride, geom.padding, geom.dilation, geom.groups,
                                  layout)


@register("conv2d_grad_weight", "direct", layouts=_LAYOUTS)
def conv2d_grad_weight(grad_y, x, geom, layout):
    return _cpu.conv2d_grad_weight(grad_y, x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.dilation,
                                   geom.groups, layout)


# Pooling: the C++ operators of src/pool.cpp, native in both layouts.


@register("max_pool2d", "direct", layouts=_LAYOUTS)
def max_pool2d(x, geom, layout):
    return _cpu.max_pool2d(x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.dilation, geom.ceil_mode, layout,
                           geom.return_indices)


@register("max_pool2d_backward", "direct", layouts=_LAYOUTS)
def max_pool2d_backward(grad_y, indices, geom, layout):
    return _cpu.max_pool2d_backward(grad_y, indices, (geom.H, geom.W), (geom.kh, geom.kw), geom.stride, geom.padding,
                                    geom.dilation, geom.ceil_mode, layout)


@register("avg_pool2d", "direct", layouts=_LAYOUTS)
def avg_pool2d(x, geom, layout):
    return _cpu.avg_pool2d(x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.ceil_mode, geom.count_include_pad,
                           geom.divisor_override, layout)


@register("avg_pool2d_backward", "direct", layouts=_LAYOUTS)
def avg_pool2d_backward(grad_y, geom, layout):
    return _cpu.avg_pool2d_backward(grad_y, (geom.H, geom.W), (geom.kh, geom.kw), geom.stride, geom.padding,
                                    geom.ceil_mode, geom.count_include_pad, geom.divisor_override, layout)


@register("maxout2d", "direct", layouts=_LAYOUTS)
def maxout2d(x, k, layout):
    return _cpu.maxout2d(x, k, layout)


@register("maxout2d_backward", "direct", layouts=_LAYOUTS)
def maxout2d_backward(grad_y, x, k, layout):
    return _cpu.maxout2d_backward(grad_y, x, k, layout)
