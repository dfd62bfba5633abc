"""algo="direct" on the CPU: the C++ kernels of convkit._cpu (see src/)."""
from . import _cpu
from ._registry import register


@register("conv2d_forward", "direct")
def conv2d_forward(x, w, bias, geom, activation, layout):
    return _cpu.conv2d_forward(x, w, bias, geom.stride, geom.padding, geom.dilation, geom.groups,
                               activation == "relu")


@register("conv2d_grad_input", "direct")
def conv2d_grad_input(grad_y, w, geom, layout):
    return _cpu.conv2d_grad_input(grad_y, w, (geom.H, geom.W), geom.stride, geom.padding, geom.dilation, geom.groups)


@register("conv2d_grad_weight", "direct")
def conv2d_grad_weight(grad_y, x, geom, layout):
    return _cpu.conv2d_grad_weight(grad_y, x, (geom.kh, geom.kw), geom.stride, geom.padding, geom.dilation,
                                   geom.groups)
