"""The conv2d geometry as the kernels see it, and the index maps the conv kernels share.

ConvGeo travels as one kernel argument (a named tuple of ints, passed by value); its
sizes are conv2d's own (x -> y, NCHW) whichever direction a kernel computes.
"""
from __future__ import annotations

from collections import namedtuple

from numba import cuda

ConvGeo = namedtuple("ConvGeo", [
    "N", "C", "H", "W", "K", "OH", "OW", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl", "G",
    "has_bias", "relu",  # forward epilogue
    "M", "R", "P", "splits", "chunk",  # implicit GEMM: its sizes, and the cut of its reduction
])


def conv_geo(geom, *, has_bias=False, relu=False, gemm=(0, 0, 0), splits=1, chunk=0) -> ConvGeo:
    """The ConvGeo of a checked _args.ConvGeom."""
    return ConvGeo(geom.N, geom.C, geom.H, geom.W, geom.K, geom.OH, geom.OW, geom.kh, geom.kw,
                   geom.stride[0], geom.stride[1], geom.dilation[0], geom.dilation[1], geom.padding[0],
                   geom.padding[2], geom.groups, int(has_bias), int(relu), *gemm, splits, chunk)


@cuda.jit(device=True)
def im2col(x, geo, g, c, i, j, n, oh, ow, zero):
    """x[n, g*Cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]; ``zero`` (of x's dtype) in the padding."""
    h = oh * geo.sh - geo.pt + i * geo.dh
    w = ow * geo.sw - geo.pl + j * geo.dw
    if h < 0 or h >= geo.H or w < 0 or w >= geo.W:
        return zero
    return x[n, g * (geo.C // geo.G) + c, h, w]
