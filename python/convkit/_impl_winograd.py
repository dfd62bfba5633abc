"""algo="winograd" on the CPU: Winograd F(4x4, 3x3), grad-weight F(3x3, 4x4)
(src/conv_winograd.cpp).

Computes float32 conv2d with groups == 1 whose kernel has at most 3 taps per axis in
each stride phase: 3x3 at stride 1 with any padding and dilation (a dilated layer is an
ordinary 3x3 convolution on each of its dilation sub-grids), and strided kernels up to
3x the stride (AlexNet's 11x11 stride 4, a 4x4 or 5x5 stride 2), whose s*s stride
phases stacked as channels make a 3x3 stride-1 convolution (src/conv_winograd.h).
NCHW and NHWC natively: the forward (bias and ReLU fused into the output transform), the
grad-input (the same in reverse, weights turned 180 degrees), hence conv_transpose2d's
forward and grad-input, and the grad-weight of both (F(3x3, 4x4): each 4x4 tile of
grad_output is the kernel of a correlation with its 6x6 input window, the tiles' sums
kept in the transform domain). Other calls are not covered (registry.NotCovered).

Multiplies per output: 36 per 16 outputs and (phase) channel pair instead of 144 for a
3x3 kernel (2.25 s*s instead of kh*kw when strided), at a small
cost in accuracy: measured against convkit.reference on the suite's 3x3 stride-1
layers, the largest error is 2e-6 to 1.5e-5 of the output's largest value (the direct
engine's: 1e-6 to 2e-6; the float32 tolerance: 1e-4); grad-weight, whose sums run over
every tile (in runs of at most 256, each then added to the total), up to 8.3e-6, see
bench/winograd_vs_direct.py.
"""
import numpy as np

from . import _cpu
from ._registry import register

_LAYOUTS = ("NCHW", "NHWC")


def phase_taps(k, s, pad):
    """Taps per axis of a stride-s kernel of k taps split into stride phases (see
    src/conv_winograd.h): ceil(k / s), one more when pad is not a multiple of s."""
    base = pad % s - s if pad % s else 0
    return -((base - k) // s)


def covers(geom, dtype):
    """None when the Winograd kernels compute this call, else why not."""
    if dtype is not None and np.dtype(dtype) != np.float32:
        return f"float32 only, got {np.dtype(dtype).name}"
    taps = (phase_taps(geom.kh, geom.stride[0], geom.padding[0]),
            phase_taps(geom.kw, geom.stride[1], geom.padding[2]))
    strided, dilated = geom.stride != (1, 1), geom.dilation != (1, 1)
    if geom.groups != 1 or (strided and dilated) or max(taps) > 3:
        return (f"needs groups 1, dilation only at stride 1 and at most 3 taps per stride phase "
                f"(kernel <= 3 x stride), got kernel {(geom.kh, geom.kw)}, stride {geom.stride}, "
                f"dilation {geom.dilation}, groups {geom.groups} ({taps[0]}x{taps[1]} phase taps)")
    return None


@register("conv2d_forward", "winograd", layouts=_LAYOUTS, covers=covers)
def conv2d_forward(x, w, bias, geom, activation, layout):
    return _cpu.winograd_conv2d_forward(x, w, bias, geom.stride, geom.padding, geom.dilation, activation == "relu",
                                        layout)


@register("conv2d_grad_input", "winograd", layouts=_LAYOUTS, covers=covers)
def conv2d_grad_input(grad_y, w, geom, layout):
    return _cpu.winograd_conv2d_grad_input(grad_y, w, (geom.H, geom.W), geom.stride, geom.padding, geom.dilation,
                                           layout)


@register("conv2d_grad_weight", "winograd", layouts=_LAYOUTS, covers=covers)
def conv2d_grad_weight(grad_y, x, geom, layout):
    return _cpu.winograd_conv2d_grad_weight(grad_y, x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.dilation,
                                            layout)
