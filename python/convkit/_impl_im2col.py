"""algo="im2col" on the CPU: convolution as BLAS matrix products (kernels/cython/im2col.pyx).

Takes NCHW and NHWC. NHWC runs natively (per-pixel rows of columns, no transpose) when a
pixel's channels make a worthwhile copy: groups == 1 and C >= NHWC_MIN_CHANNELS.
Otherwise the arrays are transposed to NCHW around the NCHW kernels, whose column rows
are whole image rows. Measured at one thread, native NHWC vs transposing (GFLOP/s):
C=1 5x5 (LeNet) 3 vs 17, C=3 7x7 (ResNet stem) 40 vs 93, C=4 3x3 82 vs 75, C=16 129 vs
110; grouped, a pass per group over interleaved channels: depthwise 1 vs 6, 16 groups
of 4 channels 10 vs 28, 8 groups of 8 23 vs 28.

The column buffer is capped by convkit.set_im2col_buffer_limit. The BLAS runs on
convkit.get_num_threads() threads during each call (_runtime.scipy_blas_threads).
"""
import functools

import numpy as np

from . import _im2col
from ._registry import register
from ._runtime import get_im2col_buffer_limit, scipy_blas_threads

_LAYOUTS = ("NCHW", "NHWC")
NHWC_MIN_CHANNELS = 4


def _transposed(geom, layout) -> bool:
    """Whether an NHWC call runs through the NCHW kernels (see the module docstring)."""
    return layout == "NHWC" and (geom.groups > 1 or geom.C < NHWC_MIN_CHANNELS)


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _blas_threads(primitive):
    """The primitive with SciPy's BLAS on convkit's thread count for the call."""
    @functools.wraps(primitive)
    def call(*args):
        with scipy_blas_threads():
            return primitive(*args)
    return call


@register("conv2d_forward", "im2col", layouts=_LAYOUTS)
@_blas_threads
def conv2d_forward(x, w, bias, geom, activation, layout):
    if _transposed(geom, layout):
        return _nhwc(conv2d_forward(_nchw(x), w, bias, geom, activation, "NCHW"))
    return _im2col.conv2d_forward(x, w, bias, geom.stride, geom.padding, geom.dilation, geom.groups,
                                  activation == "relu", layout == "NHWC", get_im2col_buffer_limit())


@register("conv2d_grad_input", "im2col", layouts=_LAYOUTS)
@_blas_threads
def conv2d_grad_input(grad_y, w, geom, layout):
    if _transposed(geom, layout):
        return _nhwc(conv2d_grad_input(_nchw(grad_y), w, geom, "NCHW"))
    return _im2col.conv2d_grad_input(grad_y, w, (geom.H, geom.W), geom.stride, geom.padding, geom.dilation,
                                     geom.groups, layout == "NHWC", get_im2col_buffer_limit())


@register("conv2d_grad_weight", "im2col", layouts=_LAYOUTS)
@_blas_threads
def conv2d_grad_weight(grad_y, x, geom, layout):
    if _transposed(geom, layout):
        return conv2d_grad_weight(_nchw(grad_y), _nchw(x), geom, "NCHW")
    return _im2col.conv2d_grad_weight(grad_y, x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.dilation,
                                      geom.groups, layout == "NHWC", get_im2col_buffer_limit())
