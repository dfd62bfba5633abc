"""Every public op of convkit.functional with one valid call, for the tests that sweep
all ops (layouts, dtypes, memory orders, NaN, argument checks).

An OpCall names the op, the shapes of its array arguments (NCHW; which of them are
activations that follow ``layout`` and which are weights that keep torch's shape), its
other arguments, which outputs are activations, the registry primitives it runs on,
and its float64 reference (convkit.reference, same argument names).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import convkit
from convkit import reference as ref

N, C, H, W = 2, 3, 7, 6
CONV = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")


@dataclass(frozen=True)
class OpCall:
    id: str
    name: str
    shapes: tuple            # of the positional array arguments
    activations: tuple       # per argument: True if it is laid out as `layout` says
    kwargs: dict
    outputs: tuple           # per output: True if it is an activation (else weight/bias/...)
    primitives: tuple
    reference: object = None  # f(*float64 arrays, **kwargs); default: reference.<name>

    @property
    def fn(self):
        return getattr(convkit, self.name)

    def arrays(self, dtype, seed=0) -> list:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(s).astype(dtype) for s in self.shapes]

    def run(self, arrays, **options) -> tuple:
        """The op's outputs as a tuple (options: layout, algo, device, ...)."""
        out = self.fn(*arrays, **self.kwargs, **options)
        return out if isinstance(out, tuple) else (out,)

    def run_reference(self, arrays) -> tuple:
        f = self.reference or getattr(ref, self.name)
        out = f(*(np.asarray(a, dtype=np.float64) for a in arrays), **self.kwargs)
        return out if isinstance(out, tuple) else (out,)


def _x_shape_instead_of_x(f):
    """Adapter: the reference's pool backward takes x's shape where the API takes x."""
    return lambda go, x, **kw: f(go, x.shape, **kw)


CONV_KW = dict(stride=2, padding=1)
POOL_KW = dict(kernel_size=3, stride=2, padding=1)
OH, OW = 4, 3  # conv/pool output of a 7x6 input, kernel 3, stride 2, padding 1
T_OH, T_OW = 14, 12  # conv_transpose2d: (H-1)*2 - 2 + 2 + 1 + 1

OPS = [
    OpCall("conv2d", "conv2d", ((N, C, H, W), (4, C, 3, 3), (4,)), (True, False, False), CONV_KW, (True,),
           ("conv2d_forward",)),
    OpCall("conv2d[relu]", "conv2d", ((N, C, H, W), (4, C, 3, 3), (4,)), (True, False, False),
           dict(CONV_KW, activation="relu"), (True,), ("conv2d_forward",),
           lambda x, w, b, activation, **kw: np.maximum(ref.conv2d(x, w, b, **kw), 0)),
    OpCall("conv2d_backward", "conv2d_backward", ((N, 4, OH, OW), (N, C, H, W), (4, C, 3, 3)), (True, True, False),
           CONV_KW, (True, False, False), CONV),
    OpCall("conv_transpose2d", "conv_transpose2d", ((N, C, H, W), (C, 2, 3, 3), (2,)), (True, False, False),
           dict(stride=2, padding=1, output_padding=1), (True,), ("conv2d_grad_input",)),
    OpCall("conv_transpose2d_backward", "conv_transpose2d_backward", ((N, 2, T_OH, T_OW), (N, C, H, W), (C, 2, 3, 3)),
           (True, True, False), dict(stride=2, padding=1, output_padding=1), (True, False, False), CONV),
    OpCall("depthwise_conv2d", "depthwise_conv2d", ((N, C, H, W), (2 * C, 1, 3, 3), (2 * C,)), (True, False, False),
           dict(padding="same", dilation=2), (True,), ("conv2d_forward",)),
    OpCall("depthwise_conv2d_backward", "depthwise_conv2d_backward", ((N, 2 * C, H, W), (N, C, H, W), (2 * C, 1, 3, 3)),
           (True, True, False), dict(padding="same", dilation=2), (True, False, False), CONV),
    OpCall("separable_conv2d", "separable_conv2d", ((N, C, H, W), (C, 1, 3, 3), (5, C, 1, 1), (5,)),
           (True, False, False, False), CONV_KW, (True,), ("conv2d_forward",)),
    OpCall("separable_conv2d_backward", "separable_conv2d_backward",
           ((N, 5, OH, OW), (N, C, H, W), (C, 1, 3, 3), (5, C, 1, 1)), (True, True, False, False), CONV_KW,
           (True, False, False, False), CONV),
    OpCall("max_pool2d", "max_pool2d", ((N, C, H, W),), (True,), POOL_KW, (True,), ("max_pool2d",)),
    OpCall("max_pool2d[indices]", "max_pool2d", ((N, C, H, W),), (True,), dict(POOL_KW, return_indices=True),
           (True, True), ("max_pool2d",)),
    OpCall("max_pool2d_backward", "max_pool2d_backward", ((N, C, OH, OW), (N, C, H, W)), (True, True), POOL_KW,
           (True,), ("max_pool2d", "max_pool2d_backward")),
    OpCall("avg_pool2d", "avg_pool2d", ((N, C, H, W),), (True,), dict(POOL_KW, count_include_pad=False), (True,),
           ("avg_pool2d",)),
    OpCall("avg_pool2d_backward", "avg_pool2d_backward", ((N, C, OH, OW), (N, C, H, W)), (True, True),
           dict(POOL_KW, count_include_pad=False), (True,), ("avg_pool2d_backward",),
           _x_shape_instead_of_x(ref.avg_pool2d_backward)),
    OpCall("global_avg_pool2d", "global_avg_pool2d", ((N, C, H, W),), (True,), {}, (True,), ("avg_pool2d",)),
    OpCall("global_avg_pool2d_backward", "global_avg_pool2d_backward", ((N, C, 1, 1), (N, C, H, W)), (True, True),
           {}, (True,), ("avg_pool2d_backward",), _x_shape_instead_of_x(ref.global_avg_pool2d_backward)),
    OpCall("global_max_pool2d", "global_max_pool2d", ((N, C, H, W),), (True,), {}, (True,), ("max_pool2d",)),
    OpCall("global_max_pool2d_backward", "global_max_pool2d_backward", ((N, C, 1, 1), (N, C, H, W)), (True, True),
           {}, (True,), ("max_pool2d", "max_pool2d_backward")),
    OpCall("maxout2d", "maxout2d", ((N, C, H, W),), (True,), dict(k=C), (True,), ("maxout2d",)),
    OpCall("maxout2d_backward", "maxout2d_backward", ((N, 1, H, W), (N, C, H, W)), (True, True), dict(k=C), (True,),
           ("maxout2d_backward",)),
]


def to_nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def to_nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))
