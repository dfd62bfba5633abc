"""Max and average pooling, forward and backward: one thread per element, no atomics.

The backward kernels gather rather than scatter: one thread per input element sums the
gradients of the (at most kh*kw) output windows that contain it, so no two threads write
the same element and the sum's order is fixed. Max pooling's backward routes a window's
gradient to the element its index names when that element lies in the window, which is
always the case for indices from max_pool2d (PyTorch's CUDA kernel does the same).

Launch (all four): elementwise.map_launch over the written array: blocks of up to 32x8
threads along (W, H), grid y = channels, z = batch.
Cost model: forward reads kh*kw inputs per output (neighbouring windows overlap, so L1/L2
serve all but about (S_h*S_w)/(kh*kw) of them) and writes one output (plus its int64
index for max); backward reads up to kh*kw/(S_h*S_w) gradients (and indices) per input
element. All four are bound by memory bandwidth.
"""
from __future__ import annotations

import functools
import math
from collections import namedtuple

from numba import cuda

from . import _device as dev
from ._index import imax, imin
from .elementwise import map_index, map_launch


PoolGeo = namedtuple("PoolGeo", ["H", "W", "OH", "OW", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw",
                                 "count_include_pad", "divisor_override"])


def pool_geo(geom) -> PoolGeo:
    """The kernels' argument (ints, by value) of a checked _args.PoolGeom; divisor_override 0 = none."""
    return PoolGeo(geom.H, geom.W, geom.OH, geom.OW, geom.kh, geom.kw, *geom.stride, *geom.padding,
                   *geom.dilation, int(geom.count_include_pad), geom.divisor_override or 0)


@cuda.jit(device=True)
def _avg_divisor(pg, oh, ow):
    """torch's avg_pool2d divisor of window (oh, ow), and the window clipped to the input."""
    h0 = oh * pg.sh - pg.ph
    w0 = ow * pg.sw - pg.pw
    h1 = imin(h0 + pg.kh, pg.H + pg.ph)
    w1 = imin(w0 + pg.kw, pg.W + pg.pw)
    pool = (h1 - h0) * (w1 - w0)
    h0, w0, h1, w1 = imax(h0, 0), imax(w0, 0), imin(h1, pg.H), imin(w1, pg.W)
    if pg.divisor_override > 0:
        div = pg.divisor_override
    elif pg.count_include_pad:
        div = pool
    else:
        div = (h1 - h0) * (w1 - w0)
    return div, h0, w0, h1, w1


@cuda.jit(device=True)
def _first_tap(o_pos, pad, stride, i, dil):
    """The output position whose tap i covers input position o_pos, or -1 if none does."""
    q = o_pos + pad - i * dil
    if q < 0 or q % stride != 0:
        return -1
    return q // stride


@functools.lru_cache(maxsize=None)
def build(dtype):
    """The four pooling kernels of one dtype (geometry is a runtime tuple: no recompiles)."""
    dt = dev.numba_type(dtype)
    tag = dev.dtype_tag(dtype)

    def max_pool(x, y, idx, pg):
        H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw = pg[:12]
        n, c, oh, ow = map_index(OH, OW)
        if oh >= OH or ow >= OW:
            return
        best = dt(-math.inf)
        arg = -1
        for i in range(kh):
            h = oh * sh - ph + i * dh
            if h < 0 or h >= H:
                continue
            for j in range(kw):
                w = ow * sw - pw + j * dw
                if w < 0 or w >= W:
                    continue
                v = x[n, c, h, w]
                # the first element, then a strictly larger one (ties keep the first) or
                # the first NaN; nothing replaces a NaN (the reference's rule)
                if arg < 0 or (not math.isnan(best) and (v > best or math.isnan(v))):
                    best = v
                    arg = h * W + w
        y[n, c, oh, ow] = best
        idx[n, c, oh, ow] = arg

    def max_pool_backward(gy, idx, gx, pg):
        H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw = pg[:12]
        n, c, h, w = map_index(H, W)
        if h >= H or w >= W:
            return
        acc = dt(0)
        for i in range(kh):
            oh = _first_tap(h, ph, sh, i, dh)
            if oh < 0 or oh >= OH:
                continue
            for j in range(kw):
                ow = _first_tap(w, pw, sw, j, dw)
                if ow >= 0 and ow < OW and idx[n, c, oh, ow] == h * W + w:
                    acc += gy[n, c, oh, ow]
        gx[n, c, h, w] = acc

    def avg_pool(x, y, pg):
        n, c, oh, ow = map_index(pg.OH, pg.OW)
        if oh >= pg.OH or ow >= pg.OW:
            return
        div, h0, w0, h1, w1 = _avg_divisor(pg, oh, ow)
        acc = dt(0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / dt(div)

    def avg_pool_backward(gy, gx, pg):
        H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw = pg[:12]
        n, c, h, w = map_index(H, W)
        if h >= H or w >= W:
            return
        acc = dt(0)
        # windows (oh, ow) with oh*sh - ph <= h < oh*sh - ph + kh, likewise for w
        for oh in range(imax(0, -((kh - 1 - h - ph) // sh)), imin(OH, (h + ph) // sh + 1)):
            for ow in range(imax(0, -((kw - 1 - w - pw) // sw)), imin(OW, (w + pw) // sw + 1)):
                div, h0, w0, h1, w1 = _avg_divisor(pg, oh, ow)
                acc += gy[n, c, oh, ow] / dt(div)
        gx[n, c, h, w] = acc

    kernels = {"max_pool": max_pool, "max_pool_backward": max_pool_backward, "avg_pool": avg_pool,
               "avg_pool_backward": avg_pool_backward}
    return {name: dev.kernel(fn, f"{tag}_{name}_nchw") for name, fn in kernels.items()}


def _run(name, out_shape, *arrays, geom):
    grid, block = map_launch(out_shape)
    dev.launch(build(arrays[0].dtype)[name], grid, block, *arrays, pool_geo(geom))


def max_pool2d(x, geom) -> tuple:
    """(y, int64 indices) of device array x."""
    shape = (geom.N, geom.C, geom.OH, geom.OW)
    y, idx = dev.empty(shape, x.dtype), dev.empty(shape, "int64")
    _run("max_pool", shape, x, y, idx, geom=geom)
    return y, idx


def max_pool2d_backward(gy, idx, geom):
    gx = dev.empty((geom.N, geom.C, geom.H, geom.W), gy.dtype)
    _run("max_pool_backward", gx.shape, gy, idx, gx, geom=geom)
    return gx


def avg_pool2d(x, geom):
    y = dev.empty((geom.N, geom.C, geom.OH, geom.OW), x.dtype)
    _run("avg_pool", y.shape, x, y, geom=geom)
    return y


def avg_pool2d_backward(gy, geom):
    gx = dev.empty((geom.N, geom.C, geom.H, geom.W), gy.dtype)
    _run("avg_pool_backward", gx.shape, gy, gx, geom=geom)
    return gx
