"""One thread per element of a 4-D array: the launch shape, and the copy/bias kernels.

The map launch covers an array (A, B, R, Q) with blocks of (bx, by) threads over its last
two axes (consecutive threads on consecutive Q: coalesced) and the grid's y and z over
B and A (CUDA allows 65535 each: channels, batch). Pooling kernels use it too.
"""
from __future__ import annotations

from numba import cuda

from . import _device as dev


def map_launch(shape) -> tuple:
    """(grid, block) covering a 4-D shape one thread per element; block no larger than R x Q."""
    A, B, R, Q = (int(s) for s in shape)
    bx_max, by_max = dev.current_tiles().map_block
    bx, by = dev.pow2_at_most(Q, bx_max), dev.pow2_at_most(R, by_max)
    return (dev.ceil_div(Q, bx) * dev.ceil_div(R, by), B, A), (bx, by)


@cuda.jit(device=True)
def map_index(rows, cols):
    """(a, b, r, q) of this thread under map_launch of (A, B, rows, cols)."""
    tiles_q = (cols + cuda.blockDim.x - 1) // cuda.blockDim.x
    q = (cuda.blockIdx.x % tiles_q) * cuda.blockDim.x + cuda.threadIdx.x
    r = (cuda.blockIdx.x // tiles_q) * cuda.blockDim.y + cuda.threadIdx.y
    return cuda.blockIdx.z, cuda.blockIdx.y, r, q


@cuda.jit
def _copy_window(src, dst):
    """dst[a, b, r, q] = src[a, b, r, q] where src has that element, else 0.

    Cost: one load and one store per element of dst; bound by memory bandwidth.
    """
    a, b, r, q = map_index(dst.shape[2], dst.shape[3])
    if r < dst.shape[2] and q < dst.shape[3]:
        if b < src.shape[1] and r < src.shape[2] and q < src.shape[3] and a < src.shape[0]:
            dst[a, b, r, q] = src[a, b, r, q]
        else:
            dst[a, b, r, q] = 0  # an int constant, stored as dst's dtype


@cuda.jit
def _add_channel_bias(y, bias, channel_axis):
    """y[..., c, ...] += bias[c] in place, c on axis 1 (NCHW) or 3 (NHWC). Memory bound."""
    a, b, r, q = map_index(y.shape[2], y.shape[3])
    if r < y.shape[2] and q < y.shape[3]:
        y[a, b, r, q] += bias[b if channel_axis == 1 else q]


def copy_window(src, shape):
    """A new device array of `shape`: src's overlapping corner, zeros elsewhere (pad or crop)."""
    out = dev.empty(shape, src.dtype)
    grid, block = map_launch(shape)
    dev.launch(_copy_window, grid, block, src, out)
    return out


def add_channel_bias(y, bias, layout: str) -> None:
    grid, block = map_launch(y.shape)
    dev.launch(_add_channel_bias, grid, block, y, bias, 3 if layout == "NHWC" else 1)
