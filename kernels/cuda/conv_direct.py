"""Tiled direct convolution: conv2d forward and its grad-input, input tiles in shared memory.

One kernel template serves both directions. It reads a *source* (x forward, grad_y for
grad-input) and writes a *destination* (y, grad_x); the directions differ only in how a
destination pixel finds its source taps:

    forward      src row = dst_row*S - P + i*D                      (every tap lands)
    grad-input   src row = (dst_row + P - i*D) / S  when S divides   (1 in S taps land)

and in which weight index is the destination channel (w[k, c] is (dst, src) forward and
(src, dst) for grad-input). Both reuse w without flipping it.

Depthwise convolution (C/groups == 1) is this kernel with one output channel per thread
(KB = the channel multiplier, usually 1): one thread per output element, its filter in
shared memory, the input tile staged once and read kh*kw times from shared memory.
"""
from __future__ import annotations

import functools

from numba import cuda

from . import _device as dev


def _patch_len(block: int, k: int, s: int, d: int, transposed: bool) -> int:
    """Source rows one block of `block` destination rows reads (see the tap maps above)."""
    if transposed:
        return (block - 1 + (k - 1) * d) // s + 2
    return (block - 1) * s + (k - 1) * d + 1


@cuda.jit(device=True)
def _patch_pos(transposed, local, o, pad, tap, S, D, origin):
    """Where destination position o (local-th in its block) finds tap `tap` in the patch; -1: nowhere."""
    if transposed:
        q = o + pad - tap * D
        if q % S != 0:
            return -1
        return q // S - origin
    return local * S + tap * D


@functools.lru_cache(maxsize=None)
def build(dtype, transposed: bool, KH: int, KW: int, SH: int, SW: int, DH: int, DW: int,
          BW: int, BH: int, KB: int):
    """The direct conv kernel for one dtype, direction, kernel/stride/dilation and tile.

    Launch: block (BW, BH) threads, one destination pixel each, KB destination channels
    per thread (registers); grid (tiles_w * tiles_h, G * ceil(DCg / KB), N).
    Shared memory: the source patch (PH x PW) of one source channel and the KB x kh x kw
    weights, refilled once per source channel of the group.

    Cost model (forward; grad-input does 1/(SH*SW) of the multiply-adds):
      FLOPs  2 * N * K * OH * OW * (C/groups) * kh * kw
      bytes  read: blocks * (C/groups) * (PH*PW + KB*kh*kw) * itemsize, each input element
             about (1 + halo) * ceil(Kg/KB) times; written: N*K*OH*OW*itemsize
      bound  each tap costs one shared load (patch) plus KB broadcast loads (weights) for
             KB multiply-adds, so dense layers are bound by shared-memory bandwidth (use
             implicit_gemm there); depthwise and few-channel layers by global memory.
    """
    dt = dev.numba_type(dtype)
    PH = _patch_len(BH, KH, SH, DH, transposed)
    PW = _patch_len(BW, KW, SW, DW, transposed)
    NT = BW * BH
    TAPS = KH * KW

    def conv(src, w, bias, dst, geo):
        SCg, SRC_H, SRC_W, DCg, DST_H, DST_W, pt, pl, has_bias, relu = geo
        zero = dt(0)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * BW + tx
        tiles_w = (DST_W + BW - 1) // BW
        w0 = (cuda.blockIdx.x % tiles_w) * BW
        h0 = (cuda.blockIdx.x // tiles_w) * BH
        KT = (DCg + KB - 1) // KB
        g = cuda.blockIdx.y // KT
        dl0 = (cuda.blockIdx.y % KT) * KB  # first destination channel of the block, in its group
        n = cuda.blockIdx.z
        oh = h0 + ty
        ow = w0 + tx
        if transposed:
            org_h = (h0 + pt - (KH - 1) * DH) // SH  # floor division, as Python: may be < 0
            org_w = (w0 + pl - (KW - 1) * DW) // SW
        else:
            org_h = h0 * SH - pt
            org_w = w0 * SW - pl
        patch = cuda.shared.array((PH, PW), dt)
        wsh = cuda.shared.array((KB, KH, KW), dt)
        acc = cuda.local.array(KB, dt)
        for kb in range(KB):
            acc[kb] = zero
        for sl in range(SCg):
            sc = g * SCg + sl
            # Consecutive threads load consecutive source columns: coalesced when SW == 1.
            for t in range(tid, PH * PW, NT):
                r = t // PW
                c = t - r * PW
                hh = org_h + r
                ww = org_w + c
                v = zero
                if hh >= 0 and hh < SRC_H and ww >= 0 and ww < SRC_W:
                    v = src[n, sc, hh, ww]
                patch[r, c] = v
            for t in range(tid, KB * TAPS, NT):
                kb = t // TAPS
                i = (t - kb * TAPS) // KW
                j = t - kb * TAPS - i * KW
                v = zero
                if dl0 + kb < DCg:
                    if transposed:
                        v = w[sc, dl0 + kb, i, j]
                    else:
                        v = w[g * DCg + dl0 + kb, sl, i, j]
                wsh[kb, i, j] = v
            cuda.syncthreads()
            if oh < DST_H and ow < DST_W:
                for i in range(KH):
                    pr = _patch_pos(transposed, ty, oh, pt, i, SH, DH, org_h)
                    if pr < 0:
                        continue
                    for j in range(KW):
                        pc = _patch_pos(transposed, tx, ow, pl, j, SW, DW, org_w)
                        if pc < 0:
                            continue
                        v = patch[pr, pc]
                        for kb in range(KB):
                            acc[kb] += v * wsh[kb, i, j]
            cuda.syncthreads()
        if oh < DST_H and ow < DST_W:
            for kb in range(KB):
                if dl0 + kb < DCg:
                    dc = g * DCg + dl0 + kb
                    v = acc[kb]
                    if has_bias:
                        v += bias[dc]
                    if relu and v < zero:  # NaN stays NaN, as the reference's relu
                        v = zero
                    dst[n, dc, oh, ow] = v

    name = (f"{dev.dtype_tag(dtype)}_conv{'_grad_input' if transposed else ''}_direct_{BH}x{BW}x{KB}"
            f"_k{KH}x{KW}_s{SH}x{SW}_d{DH}x{DW}")
    return dev.kernel(conv, name)


def tile(src_channels_per_group: int, dst_channels_per_group: int, dst_hw, geom, transposed: bool, itemsize: int):
    """(BW, BH, KB) from the tile ceilings and the shape, or None if no tile fits.

    The block is no larger than the destination (powers of two), KB no larger than the
    group's channels; the tile shrinks (larger side first) until patch + weights fit in
    static shared memory. None only for receptive fields beyond ~70x70 (float64).
    """
    t = dev.current_tiles()
    BW = dev.pow2_at_most(dst_hw[1], t.direct_block[0])
    BH = dev.pow2_at_most(dst_hw[0], t.direct_block[1])
    KB = dev.pow2_at_most(dst_channels_per_group, t.direct_channels)
    (SH, SW), (DH, DW) = geom.stride, geom.dilation
    while True:
        elems = _patch_len(BH, geom.kh, SH, DH, transposed) * _patch_len(BW, geom.kw, SW, DW, transposed) \
            + KB * geom.kh * geom.kw
        if elems * itemsize <= dev.SHARED_BYTES:
            return BW, BH, KB
        if BW == BH == 1:
            return None
        if BW >= BH:
            BW //= 2
        else:
            BH //= 2


def launch(src, w, bias, dst, geom, *, transposed: bool, relu: bool = False) -> bool:
    """dst = conv(src, w) (+ bias, relu) for forward, or the grad-input when transposed.

    Arrays are device arrays, NCHW; dst is written entirely. Returns False (nothing
    launched) when no tile fits in shared memory; the caller then uses implicit_gemm.
    """
    G = geom.groups
    if transposed:
        src_c, src_hw, dst_c, dst_hw = geom.K, (geom.OH, geom.OW), geom.C, (geom.H, geom.W)
    else:
        src_c, src_hw, dst_c, dst_hw = geom.C, (geom.H, geom.W), geom.K, (geom.OH, geom.OW)
    shape = tile(src_c // G, dst_c // G, dst_hw, geom, transposed, dst.dtype.itemsize)
    if shape is None:
        return False
    BW, BH, KB = shape
    kern = build(dst.dtype, transposed, geom.kh, geom.kw, *geom.stride, *geom.dilation, BW, BH, KB)
    grid = (dev.ceil_div(dst_hw[1], BW) * dev.ceil_div(dst_hw[0], BH), G * dev.ceil_div(dst_c // G, KB), geom.N)
    geo = (src_c // G, *src_hw, dst_c // G, *dst_hw, geom.padding[0], geom.padding[2], int(bias is not None),
           int(relu))
    dev.launch(kern, grid, (BW, BH), src, w, dev.optional(bias, dst.dtype), dst, geo)
    return True
