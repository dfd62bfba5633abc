"""Reductions without float atomics: a block tree-sum, split partials summed in order.

Every reduction here is deterministic: each block sums a fixed slice in a fixed order
and a second pass (sum_splits) adds the slices' partials in split order.
"""
from __future__ import annotations

import functools

from numba import cuda

from . import _device as dev
from ._index import imin


@cuda.jit(device=True)
def tree_sum(red, tid, threads):
    """red[0, :] = the sum of rows 0..threads-1 of the shared (threads x n) array red.

    Each thread has written its row; log2(threads) barriers for all n sums at once.
    Every thread of the block must call it (it synchronises).
    """
    cuda.syncthreads()
    half = threads // 2
    while half > 0:
        if tid < half:
            for t in range(red.shape[1]):
                red[tid, t] += red[tid + half, t]
        cuda.syncthreads()
        half //= 2


@cuda.jit
def _sum_splits(partial, out):
    """out[e] = sum over s of partial[s, e]; one thread per element, coalesced along e.

    Cost: S*E loads + E stores, bound by memory bandwidth.
    """
    e = cuda.grid(1)
    if e < out.shape[0]:
        acc = partial[0, e]
        for s in range(1, partial.shape[0]):
            acc += partial[s, e]
        out[e] = acc


def split_target(out, splits: int):
    """Where a reduction cut in `splits` writes: out itself (viewed as (1, *shape)) or a workspace."""
    return out.reshape(1, *out.shape) if splits == 1 else dev.empty((splits, *out.shape), out.dtype)


def finish(partial, out) -> None:
    """out = the split partials summed in split order (nothing to do for one split)."""
    if partial.shape[0] > 1:
        sum_splits(partial, out)


def sum_splits(partial, out) -> None:
    """out (any shape, contiguous) = partial (S, *out.shape) summed over its first axis."""
    flat_out = out.reshape(out.size)
    flat_partial = partial.reshape(partial.shape[0], out.size)
    threads = dev.pow2_at_most(out.size, dev.current_tiles().reduce_threads)
    dev.launch(_sum_splits, dev.ceil_div(out.size, threads), threads, flat_partial, flat_out)


@functools.lru_cache(maxsize=None)
def _build_channel_sum(dtype, T: int):
    """Partial per-channel sums of a 4-D array over every axis but `channel_axis`.

    Launch: block T threads, grid (channels, splits); block (c, s) sums elements
    s*chunk .. (s+1)*chunk of channel c's N*H*W (thread-strided: coalesced along W in
    NCHW; strided by C in NHWC) and writes partial[s, c].
    Cost: reads the array once, bound by memory bandwidth.
    """
    dt = dev.numba_type(dtype)

    def channel_sum(y, nhwc, chunk, partial):
        red = cuda.shared.array((T, 1), dt)
        tid = cuda.threadIdx.x
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        if nhwc:
            A, B, Q = y.shape[0], y.shape[1], y.shape[2]
        else:
            A, B, Q = y.shape[0], y.shape[2], y.shape[3]
        total = A * B * Q
        end = imin(total, (s + 1) * chunk)
        acc = dt(0)
        for e in range(s * chunk + tid, end, T):
            q = e % Q
            b = (e // Q) % B
            a = e // (Q * B)
            if nhwc:
                acc += y[a, b, q, c]
            else:
                acc += y[a, c, b, q]
        red[tid, 0] = acc
        tree_sum(red, tid, T)
        if tid == 0:
            partial[s, c] = red[0, 0]

    return dev.kernel(channel_sum, f"{dev.dtype_tag(dtype)}_channel_sum_{T}")


def channel_sum(y, layout: str):
    """Sum of a 4-D device array over N, H, W: a new (C,) device array."""
    nhwc = layout == "NHWC"
    C = y.shape[3] if nhwc else y.shape[1]
    total = y.size // C
    T = dev.pow2_at_most(total, dev.current_tiles().reduce_threads)
    splits, chunk = dev.split_reduction(total, C, 4 * T)
    out = dev.empty((C,), y.dtype)
    partial = split_target(out, splits)
    dev.launch(_build_channel_sum(y.dtype, T), (C, splits), T, y, int(nhwc), chunk, partial)
    finish(partial, out)
    return out
