"""algo="reference": convkit.reference (float64 NumPy) behind the registry's primitives.

Exact and slow: the baseline of the benchmarks and the last resort of algo="auto".
Results are cast back to the input dtype, like every other implementation's.
"""
import numpy as np

from . import reference as ref
from ._registry import register


@register("conv2d_forward", "reference")
def conv2d_forward(x, w, bias, geom, activation, layout):
    y = ref.conv2d(x, w, bias, geom.stride, geom.padding, geom.dilation, geom.groups)
    if activation == "relu":
        y = np.where(y > 0, y, 0.0) + np.where(np.isnan(y), y, 0.0)
    return y.astype(x.dtype)


@register("conv2d_grad_input", "reference")
def conv2d_grad_input(grad_y, w, geom, layout):
    return ref.conv2d_grad_input(grad_y, w, (geom.H, geom.W), geom.stride, geom.padding, geom.dilation,
                                 geom.groups).astype(grad_y.dtype)


@register("conv2d_grad_weight", "reference")
def conv2d_grad_weight(grad_y, x, geom, layout):
    return ref.conv2d_grad_weight(grad_y, x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.dilation,
                                  geom.groups).astype(x.dtype)


def _pool_args(geom):
    return (geom.kh, geom.kw), geom.stride, geom.padding


@register("max_pool2d", "reference")
def max_pool2d(x, geom, layout):
    kernel, stride, padding = _pool_args(geom)
    y, idx = ref.max_pool2d(x, kernel, stride, padding, geom.dilation, geom.ceil_mode, return_indices=True)
    return y.astype(x.dtype), idx


@register("max_pool2d_backward", "reference")
def max_pool2d_backward(grad_y, indices, geom, layout):
    return ref.max_pool2d_backward_from_indices(grad_y, indices, (geom.N, geom.C, geom.H, geom.W)).astype(
        grad_y.dtype)


@register("avg_pool2d", "reference")
def avg_pool2d(x, geom, layout):
    kernel, stride, padding = _pool_args(geom)
    return ref.avg_pool2d(x, kernel, stride, padding, geom.ceil_mode, geom.count_include_pad,
                          geom.divisor_override).astype(x.dtype)


@register("avg_pool2d_backward", "reference")
def avg_pool2d_backward(grad_y, geom, layout):
    kernel, stride, padding = _pool_args(geom)
    return ref.avg_pool2d_backward(grad_y, (geom.N, geom.C, geom.H, geom.W), kernel, stride, padding,
                                   geom.ceil_mode, geom.count_include_pad, geom.divisor_override).astype(grad_y.dtype)


@register("maxout2d", "reference")
def maxout2d(x, k, layout):
    return ref.maxout2d(x, k).astype(x.dtype)


@register("maxout2d_backward", "reference")
def maxout2d_backward(grad_y, x, k, layout):
    return ref.maxout2d_backward(grad_y, x, k).astype(grad_y.dtype)
