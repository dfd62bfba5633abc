"""device="cuda" rows of the registry (convkit._registry's primitive contract).

conv2d has two algorithms: "direct" (conv_direct's shared-memory tiles for forward and
grad-input, depthwise included; conv_grad_weight_direct's per-block reductions) and
"implicit_gemm" (conv_igemm, for dense layers). Pooling has one, "direct". Every row
takes NumPy or device arrays in NCHW (functional.py transposes NHWC host arrays; NHWC
device arrays are refused there with a ValueError) and returns a device array if any
input was one, else a NumPy array (see _device.Staged).
"""
from __future__ import annotations

import functools

from convkit._registry import register

from . import _device as dev
from . import conv_direct, conv_grad_weight_direct, conv_igemm, pool

CONV_ALGOS = ("direct", "implicit_gemm")


def _conv_forward(x, w, bias, geom, activation, layout, *, algo):
    st = dev.Staged(x, w, bias)
    xd, wd, bd = st.put(x), st.put(w), st.put(bias)
    y = dev.empty((geom.N, geom.K, geom.OH, geom.OW), x.dtype)
    relu = activation == "relu"
    # direct falls back to the GEMM only for receptive fields too large for shared memory
    if algo == "implicit_gemm" or not conv_direct.launch(xd, wd, bd, y, geom, transposed=False, relu=relu):
        conv_igemm.launch("forward", wd, xd, y, geom, bias=bd, relu=relu)
    return st.result(y)


def _conv_grad_input(grad_y, w, geom, layout, *, algo):
    st = dev.Staged(grad_y, w)
    gyd, wd = st.put(grad_y), st.put(w)
    gx = dev.empty((geom.N, geom.C, geom.H, geom.W), grad_y.dtype)
    if algo == "implicit_gemm" or not conv_direct.launch(gyd, wd, None, gx, geom, transposed=True):
        conv_igemm.launch("grad_input", wd, gyd, gx, geom)
    return st.result(gx)


def _conv_grad_weight(grad_y, x, geom, layout, *, algo):
    st = dev.Staged(grad_y, x)
    gyd, xd = st.put(grad_y), st.put(x)
    gw = dev.empty((geom.K, geom.C // geom.groups, geom.kh, geom.kw), x.dtype)
    if algo == "direct":
        conv_grad_weight_direct.launch(gyd, xd, gw, geom)
    else:
        conv_igemm.launch("grad_weight", gyd, xd, gw, geom)
    return st.result(gw)


for _algo in CONV_ALGOS:
    register("conv2d_forward", _algo, "cuda")(functools.partial(_conv_forward, algo=_algo))
    register("conv2d_grad_input", _algo, "cuda")(functools.partial(_conv_grad_input, algo=_algo))
    register("conv2d_grad_weight", _algo, "cuda")(functools.partial(_conv_grad_weight, algo=_algo))


def _staged(kernel):
    """A pooling row: stage the array arguments, run `kernel(*arrays, geom)`, place the results."""

    def run(*args):
        *arrays, geom, layout = args
        st = dev.Staged(*arrays)
        out = kernel(*(st.put(a) for a in arrays), geom)
        return tuple(st.result(o) for o in out) if isinstance(out, tuple) else st.result(out)

    run.__name__ = kernel.__name__
    run.__doc__ = kernel.__doc__
    return run


for _name in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"):
    register(_name, "direct", "cuda")(_staged(getattr(pool, _name)))
