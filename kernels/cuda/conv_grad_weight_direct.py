"""Direct conv2d grad-weight: one block per (output channel, input channel, split).

grad_w[k, c, i, j] = sum over (n, oh, ow) of grad_y[n, k, oh, ow] * x[n, c, oh*S-P+i*D, ...].
Each thread walks a strided share of the split's output pixels (coalesced along OW),
keeps the kh*kw sums in registers, and the block tree-sums them tap by tap; splits are
summed in order afterwards (reduce.sum_splits). No float atomics. This is the grad-weight
for depthwise and few-channel layers; dense layers reuse operands better in
conv_igemm's grad_weight.
"""
from __future__ import annotations

import functools

from numba import cuda

from . import _device as dev
from . import reduce
from ._index import imin, split3
from .conv_geometry import conv_geo, im2col


@functools.lru_cache(maxsize=None)
def build(dtype, KH: int, KW: int, T: int):
    """The kernel for one dtype, kernel size and block size.

    Launch: block T threads, grid (C/groups, K, splits).
    Cost model: FLOPs 2*K*(C/groups)*kh*kw*N*OH*OW; loads per block: chunk grad_y
    values and chunk*kh*kw x values (the x taps overlap: after the first they come from
    L1/L2), so it is bound by L1/L2 bandwidth, about one load per multiply-add.
    """
    dt = dev.numba_type(dtype)
    TAPS = KH * KW

    def grad_weight(gy, x, partial, geo):
        zero = dt(0)
        red = cuda.shared.array((T, TAPS), dt)
        acc = cuda.local.array(TAPS, dt)
        tid = cuda.threadIdx.x
        c = cuda.blockIdx.x
        k = cuda.blockIdx.y
        s = cuda.blockIdx.z
        g = k // (geo.K // geo.G)
        for t in range(TAPS):
            acc[t] = zero
        end = imin(geo.N * geo.OH * geo.OW, (s + 1) * geo.chunk)
        for r in range(s * geo.chunk + tid, end, T):
            n, oh, ow = split3(r, geo.OH, geo.OW)
            v = gy[n, k, oh, ow]
            for i in range(KH):
                for j in range(KW):
                    acc[i * KW + j] += v * im2col(x, geo, g, c, i, j, n, oh, ow, zero)
        for t in range(TAPS):
            red[tid, t] = acc[t]
        reduce.tree_sum(red, tid, T)
        for t in range(tid, TAPS, T):
            partial[s, k, c * TAPS + t] = red[0, t]

    return dev.kernel(grad_weight, f"{dev.dtype_tag(dtype)}_conv_grad_weight_direct_{T}_k{KH}x{KW}")


def launch(gy, x, gw, geom) -> None:
    """gw (K, C/groups, kh, kw) = conv2d's grad-weight of device arrays gy and x."""
    Cg = geom.C // geom.groups
    pixels = geom.N * geom.OH * geom.OW
    # the block's kh*kw partial sums per thread must fit in shared memory
    fits = dev.SHARED_BYTES // (geom.kh * geom.kw * gw.dtype.itemsize)
    T = dev.pow2_at_most(pixels, min(dev.current_tiles().reduce_threads, 1 << (fits.bit_length() - 1)))
    splits, chunk = dev.split_reduction(pixels, geom.K * Cg, 4 * T)
    flat = gw.reshape(geom.K, Cg * geom.kh * geom.kw)
    partial = reduce.split_target(flat, splits)
    dev.launch(build(gw.dtype, geom.kh, geom.kw, T), (Cg, geom.K, splits), T, gy, x, partial,
               conv_geo(geom, splits=splits, chunk=chunk))
    reduce.finish(partial, flat)
