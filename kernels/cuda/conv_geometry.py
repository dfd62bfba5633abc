"""The conv2d geometry as the kernels see it, and the index maps every conv kernel shares.

``GEO`` fields travel as one tuple of ints (a kernel argument passed by value), in this
order; the helpers decode flat indices into (n, row, col) and gather one im2col element.
"""
from __future__ import annotations

from numba import cuda

GEO = ("N", "C", "H", "W", "K", "OH", "OW", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl", "G",
       "has_bias", "relu", "splits", "chunk")


def conv_geo(geom, *, has_bias=False, relu=False, splits=1, chunk=0) -> tuple:
    """The GEO tuple of a checked _args.ConvGeom (x -> y in conv2d's own terms)."""
    return (geom.N, geom.C, geom.H, geom.W, geom.K, geom.OH, geom.OW, geom.kh, geom.kw,
            geom.stride[0], geom.stride[1], geom.dilation[0], geom.dilation[1], geom.padding[0],
            geom.padding[2], geom.groups, int(has_bias), int(relu), splits, chunk)


@cuda.jit(device=True)
def split3(flat, rows, cols):
    """flat = (a*rows + b)*cols + c -> (a, b, c)."""
    c = flat % cols
    rest = flat // cols
    return rest // rows, rest % rows, c


@cuda.jit(device=True)
def im2col(x, geo, g, c, i, j, n, oh, ow, zero):
    """x[n, g*Cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]; ``zero`` (of x's dtype) in the padding."""
    N, C, H, W, K, OH, OW, kh, kw, sh, sw, dh, dw, pt, pl, G, has_bias, relu, splits, chunk = geo
    h = oh * sh - pt + i * dh
    w = ow * sw - pl + j * dw
    if h < 0 or h >= H or w < 0 or w >= W:
        return zero
    return x[n, g * (C // G) + c, h, w]
