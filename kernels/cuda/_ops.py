"""The device-side pieces of functional.py's compositions (called for device arrays).

Each takes and returns arrays under _device.Staged's rule: a device array if any input
was one, else NumPy; nothing is written into an input.
"""
from __future__ import annotations

from . import _device as dev
from . import elementwise, reduce


def _hw_axes(layout: str) -> tuple:
    return (1, 2) if layout == "NHWC" else (2, 3)


def reduce_bias_grad(grad_y, layout: str):
    """grad_bias: grad_y (4-D, `layout`) summed over N, H, W, deterministically."""
    st = dev.Staged(grad_y)
    return st.result(reduce.channel_sum(st.put(grad_y), layout))


def _resize_bottom_right(x, extra, layout: str, sign: int):
    st = dev.Staged(x)
    shape = list(x.shape)
    for axis, e in zip(_hw_axes(layout), extra):
        shape[axis] += sign * e
    return st.result(elementwise.copy_window(st.put(x), tuple(shape)))


def pad_bottom_right(x, extra, layout: str):
    """x with extra = (rows, cols) zeros appended at the bottom/right."""
    return _resize_bottom_right(x, extra, layout, +1)


def crop_bottom_right(x, extra, layout: str):
    """x without its last extra = (rows, cols) rows/cols, as a new contiguous array."""
    return _resize_bottom_right(x, extra, layout, -1)


def add_bias(y, bias, layout: str):
    """y + bias along the channel axis of `layout`; y is one this package just returned."""
    st = dev.Staged(y, bias)
    yd = st.put(y)
    elementwise.add_channel_bias(yd, st.put(bias), layout)
    return st.result(yd)
