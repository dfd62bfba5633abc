"""algo="im2col" on the CPU: convolution as BLAS matrix products (kernels/cython/im2col.pyx).

Takes NCHW and NHWC natively (each layout has its own column order, so neither needs a
transpose). The column buffer is capped by convkit.set_im2col_buffer_limit.
"""
from . import _im2col
from ._registry import register
from ._runtime import get_im2col_buffer_limit

_LAYOUTS = ("NCHW", "NHWC")


@register("conv2d_forward", "im2col", layouts=_LAYOUTS)
def conv2d_forward(x, w, bias, geom, activation, layout):
    return _im2col.conv2d_forward(x, w, bias, geom.stride, geom.padding, geom.dilation, geom.groups,
                                  activation == "relu", layout == "NHWC", get_im2col_buffer_limit())


@register("conv2d_grad_input", "im2col", layouts=_LAYOUTS)
def conv2d_grad_input(grad_y, w, geom, layout):
    return _im2col.conv2d_grad_input(grad_y, w, (geom.H, geom.W), geom.stride, geom.padding, geom.dilation,
                                     geom.groups, layout == "NHWC", get_im2col_buffer_limit())


@register("conv2d_grad_weight", "im2col", layouts=_LAYOUTS)
def conv2d_grad_weight(grad_y, x, geom, layout):
    return _im2col.conv2d_grad_weight(grad_y, x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.dilation,
                                      geom.groups, layout == "NHWC", get_im2col_buffer_limit())
