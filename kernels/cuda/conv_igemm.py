"""Implicit GEMM: conv2d forward, grad-input and grad-weight as tiled matrix products.

Each direction is C[g][m, p] = sum_r A[g][m, r] * B[g][r, p] per group g, with the
operands gathered on the fly (no im2col buffer in memory):

    direction     M          R                 P               A          B
    forward       K/groups   C/groups*kh*kw    N*OH*OW         weight     im2col(x)
    grad_input    C/groups   K/groups*kh*kw    N*H*W           weight^T   col2im-gather(grad_y)
    grad_weight   K/groups   N*OH*OW           C/groups*kh*kw  grad_y     im2col(x)^T

grad_weight's reduction (over every output pixel of the batch) is split across blocks:
block (.., .., g*S + s) reduces its slice of R and writes a partial tile to a workspace
of shape (S, K, C/groups*kh*kw), summed in a fixed order by reduce.sum_splits: no float
atomics, and the result is the same on every run.
"""
from __future__ import annotations

import functools

from numba import cuda, int64

from . import _device as dev
from . import reduce
from ._index import imin, split3
from .conv_geometry import conv_geo, im2col

DIRECTIONS = ("forward", "grad_input", "grad_weight")


# ------------------------------------------------------------------ the three directions
@cuda.jit(device=True)
def _fwd_a(w, geo, g, m, r, zero):
    c, i, j = split3(r, geo.kh, geo.kw)
    return w[g * (geo.K // geo.G) + m, c, i, j]


@cuda.jit(device=True)
def _fwd_b(x, geo, g, r, p, zero):
    c, i, j = split3(r, geo.kh, geo.kw)
    n, oh, ow = split3(p, geo.OH, geo.OW)
    return im2col(x, geo, g, c, i, j, n, oh, ow, zero)


@cuda.jit(device=True)
def _fwd_column(geo, p):
    return split3(p, geo.OH, geo.OW)


@cuda.jit(device=True)
def _fwd_store(y, bias, geo, g, s, m, n, oh, ow, v, zero):
    k = g * (geo.K // geo.G) + m
    if geo.has_bias:
        v += bias[k]
    if geo.relu and v < zero:  # NaN stays NaN, as the reference's relu
        v = zero
    y[n, k, oh, ow] = v


@cuda.jit(device=True)
def _gin_a(w, geo, g, m, r, zero):
    k, i, j = split3(r, geo.kh, geo.kw)
    return w[g * (geo.K // geo.G) + k, m, i, j]


@cuda.jit(device=True)
def _gin_b(gy, geo, g, r, p, zero):
    """grad_y at the output pixel whose tap (i, j) lands on input pixel p, if one does."""
    k, i, j = split3(r, geo.kh, geo.kw)
    n, h, w = split3(p, geo.H, geo.W)
    qh = h + geo.pt - i * geo.dh
    qw = w + geo.pl - j * geo.dw
    if qh < 0 or qw < 0 or qh % geo.sh != 0 or qw % geo.sw != 0 or qh // geo.sh >= geo.OH or qw // geo.sw >= geo.OW:
        return zero
    return gy[n, g * (geo.K // geo.G) + k, qh // geo.sh, qw // geo.sw]


@cuda.jit(device=True)
def _gin_column(geo, p):
    return split3(p, geo.H, geo.W)


@cuda.jit(device=True)
def _gin_store(gx, bias, geo, g, s, m, n, h, w, v, zero):
    gx[n, g * (geo.C // geo.G) + m, h, w] = v


@cuda.jit(device=True)
def _gw_a(gy, geo, g, m, r, zero):
    n, oh, ow = split3(r, geo.OH, geo.OW)
    return gy[n, g * (geo.K // geo.G) + m, oh, ow]


@cuda.jit(device=True)
def _gw_b(x, geo, g, r, p, zero):
    n, oh, ow = split3(r, geo.OH, geo.OW)
    c, i, j = split3(p, geo.kh, geo.kw)
    return im2col(x, geo, g, c, i, j, n, oh, ow, zero)


@cuda.jit(device=True)
def _gw_column(geo, p):
    return 0, 0, p


@cuda.jit(device=True)
def _gw_store(partial, bias, geo, g, s, m, zero0, zero1, p, v, zero):
    partial[s, g * (geo.K // geo.G) + m, p] = v


# load A, load B, decode a column p of C into 3 indices, store, and whether B's loads
# run fastest along r (coalesced there)
_MAPS = {
    "forward": (_fwd_a, _fwd_b, _fwd_column, _fwd_store, False),
    "grad_input": (_gin_a, _gin_b, _gin_column, _gin_store, False),
    "grad_weight": (_gw_a, _gw_b, _gw_column, _gw_store, True),
}


@functools.lru_cache(maxsize=None)
def build(dtype, direction: str, BM: int, BN: int, BR: int, TM: int, TN: int):
    """The implicit-GEMM kernel for one dtype, direction and tile.

    Launch: block (BN/TN, BM/TM) threads; grid (ceil(P/BN), ceil(M/BM), groups*splits).
    Each block stages A (BR x BM) and B (BR x BN) slices in shared memory (one padding
    column against bank conflicts on the transposed stores), and each thread keeps a
    TM x TN tile of C in registers; thread (tx, ty) owns rows ty + i*BM/TM and columns
    tx + j*BN/TN, so stores of C along p are coalesced.

    Cost model: FLOPs 2*M*R*P per group (the conv's FLOPs; grad_input multiplies the
    zeros of strided taps too, S_h*S_w times the useful work); global loads
    R*(M*ceil(P/BN) + P*ceil(M/BM)) elements (each operand re-read once per tile of the
    other side); per reduction step a thread does TM*TN multiply-adds for TM+TN shared
    loads, so with the default 64x64x8 tile and 4x4 registers the kernel is bound by
    the FMA units on dense layers, by the index arithmetic of the gathers on small ones.
    """
    dt = dev.numba_type(dtype)
    load_a, load_b, column, store, b_r_fastest = _MAPS[direction]
    TX, TY = BN // TN, BM // TM
    NT = TX * TY
    A_COLS, B_COLS = BM + 1, BN + 1  # shared-array shapes must be constants, not expressions

    def gemm(a, b, out, bias, geo):
        zero = dt(0)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        m0 = cuda.blockIdx.y * BM
        p0 = cuda.blockIdx.x * BN
        g = cuda.blockIdx.z // geo.splits
        s = cuda.blockIdx.z % geo.splits
        M, P = geo.M, geo.P
        r_begin = s * geo.chunk
        r_end = imin(geo.R, r_begin + geo.chunk)
        As = cuda.shared.array((BR, A_COLS), dt)
        Bs = cuda.shared.array((BR, B_COLS), dt)
        acc = cuda.local.array((TM, TN), dt)
        av = cuda.local.array(TM, dt)
        bv = cuda.local.array(TN, dt)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = zero
        for r0 in range(r_begin, r_end, BR):
            for t in range(tid, BM * BR, NT):  # r fastest: consecutive weights / pixels
                mm = t // BR
                rr = t - mm * BR
                v = zero
                if m0 + mm < M and r0 + rr < r_end:
                    v = load_a(a, geo, g, m0 + mm, r0 + rr, zero)
                As[rr, mm] = v
            for t in range(tid, BR * BN, NT):
                if b_r_fastest:
                    pp = t // BR
                    rr = t - pp * BR
                else:
                    rr = t // BN
                    pp = t - rr * BN
                v = zero
                if p0 + pp < P and r0 + rr < r_end:
                    v = load_b(b, geo, g, r0 + rr, p0 + pp, zero)
                Bs[rr, pp] = v
            cuda.syncthreads()
            for rr in range(BR):
                for i in range(TM):
                    av[i] = As[rr, ty + i * TY]
                for j in range(TN):
                    bv[j] = Bs[rr, tx + j * TX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += av[i] * bv[j]
            cuda.syncthreads()
        # Decode the thread's columns first: with the divisions out of the store loop,
        # the compiler unrolls it and acc stays in registers (ptxas: no stack frame).
        cols = cuda.local.array((TN, 3), int64)
        for j in range(TN):
            cols[j, 0], cols[j, 1], cols[j, 2] = column(geo, p0 + tx + j * TX)
        for i in range(TM):
            for j in range(TN):
                m = m0 + ty + i * TY
                if m < M and p0 + tx + j * TX < P:
                    store(out, bias, geo, g, s, m, cols[j, 0], cols[j, 1], cols[j, 2], acc[i, j], zero)

    return dev.kernel(gemm, f"{dev.dtype_tag(dtype)}_conv_{direction}_igemm_{BM}x{BN}x{BR}_{TM}x{TN}")


def _gemm_shape(geom, direction: str) -> tuple:
    Cg, Kg, taps = geom.C // geom.groups, geom.K // geom.groups, geom.kh * geom.kw
    return {"forward": (Kg, Cg * taps, geom.N * geom.OH * geom.OW),
            "grad_input": (Cg, Kg * taps, geom.N * geom.H * geom.W),
            "grad_weight": (Kg, geom.N * geom.OH * geom.OW, Cg * taps)}[direction]


def _tile(M: int, P: int) -> tuple:
    """(BM, BN, BR, TM, TN): the ceilings, shrunk (powers of two) to the GEMM's M and P."""
    BM, BN, BR, TM, TN = dev.current_tiles().gemm
    BM, BN = dev.pow2_at_most(M, BM), dev.pow2_at_most(P, BN)
    return BM, BN, BR, min(TM, BM), min(TN, BN)


def launch(direction: str, a, b, out, geom, *, bias=None, relu: bool = False) -> None:
    """out = the direction's product of device arrays a and b (see the table above).

    forward: a=w, b=x, out=y (N,K,OH,OW); grad_input: a=w, b=grad_y, out=grad_x;
    grad_weight: a=grad_y, b=x, out=grad_w (K, C/groups, kh, kw). out is written entirely.
    """
    M, R, P = _gemm_shape(geom, direction)
    BM, BN, BR, TM, TN = _tile(M, P)
    tiles = dev.ceil_div(P, BN) * dev.ceil_div(M, BM) * geom.groups
    splits, chunk, target = 1, R, out
    if direction == "grad_weight":  # z = groups*splits stays under CUDA's 65535
        splits, chunk = dev.split_reduction(R, tiles, 4 * BR, align=BR, max_splits=65535 // geom.groups)
        out = out.reshape(geom.K, P)
        target = reduce.split_target(out, splits)
    kern = build(out.dtype, direction, BM, BN, BR, TM, TN)
    grid = (dev.ceil_div(P, BN), dev.ceil_div(M, BM), geom.groups * splits)
    geo = conv_geo(geom, has_bias=bias is not None, relu=relu, gemm=(M, R, P), splits=splits, chunk=chunk)
    dev.launch(kern, grid, (BN // TN, BM // TM), a, b, target, dev.optional(bias, out.dtype), geo)
    if direction == "grad_weight":
        reduce.finish(target, out)
