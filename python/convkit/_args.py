"""Argument checking and normalisation for the public API.

Every public op runs its arguments through here before any kernel sees them, so a bad
call is a TypeError/ValueError that names the argument and the shapes involved, and the
kernels can assume clean input: C-contiguous NCHW arrays of one float dtype and
geometry whose sizes are all valid.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NATIVE_FLOATS = frozenset(FLOAT_DTYPES)  # a byte-swapped float32 hashes and compares unequal to these
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class ConvGeom:
    """The shape of one conv2d call, in conv2d's own terms (x -> y), NCHW sizes."""

    N: int
    C: int
    H: int
    W: int
    K: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple  # (top, bottom, left, right)
    dilation: tuple
    groups: int
    OH: int
    OW: int

    @property
    def flops(self) -> int:
        """Forward FLOPs, a multiply-add counted as 2."""
        return 2 * self.N * self.K * self.OH * self.OW * (self.C // self.groups) * self.kh * self.kw


@dataclass(frozen=True)
class PoolGeom:
    """The shape of one pooling call, NCHW sizes."""

    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple  # (ph, pw), symmetric as in torch
    dilation: tuple
    ceil_mode: bool
    OH: int
    OW: int
    count_include_pad: bool = True
    divisor_override: int | None = None
    return_indices: bool = True  # max_pool2d: False lets an implementation skip them (return None)


def shape_of(a) -> str:
    return str(tuple(int(s) for s in a.shape))


def pair(value, name: str, *, minimum: int) -> tuple:
    """An int or a pair of ints, each >= minimum."""
    if type(value) is int and value >= minimum:  # the common cases, without the ABC checks below
        return (value, value)
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int and min(
            value) >= minimum:
        return value
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def as_array(x, name: str) -> np.ndarray:
    """View anything NumPy can (arrays, buffer protocol, __array_interface__, DLPack)."""
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
        arr = np.asarray(x)
    elif hasattr(x, "__dlpack__"):
        arr = np.from_dlpack(x)
    else:
        try:
            arr = np.asarray(memoryview(x))
        except TypeError:
            raise TypeError(f"{name} must be an array (NumPy array, buffer or DLPack), got {type(x).__name__}") from None
    if arr.dtype in _NATIVE_FLOATS:  # the common case, one hash lookup
        return arr
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))  # e.g. big-endian data read from a file
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {arr.dtype} with shape {shape_of(arr)}")
    return arr


def check_layout(layout) -> str:
    if type(layout) is str and layout in LAYOUTS:  # the common case: already upper case
        return layout
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout.upper()


def require_ndim(arr, name: str, ndim: int, what: str) -> None:
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {shape_of(arr)}")


def same_dtype(named: dict) -> np.dtype:
    """All given arrays share one float dtype; returns it."""
    first = None
    for a in named.values():  # a loop, not comprehensions: this runs on every call
        if a is None:
            continue
        if first is None:
            first = a.dtype
        elif a.dtype != first:
            desc = ", ".join(f"{n} {a.dtype} {shape_of(a)}" for n, a in named.items() if a is not None)
            raise TypeError(f"dtypes must match: {desc}")
    return first


def resolve_conv_padding(padding, in_hw, kernel, stride, dilation) -> tuple:
    """(top, bottom, left, right) from an int, a pair, a 4-tuple, 'valid' or 'same'.

    'same' follows TensorFlow for every stride: output = ceil(in / stride), total pad =
    max(0, (out-1)*S + D*(k-1) + 1 - in), the odd pixel at the bottom/right.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            pads = []
            for n, k, s, d in zip(in_hw, kernel, stride, dilation):
                out = -(-n // s)
                total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"padding must be an int, a pair, a 4-tuple, 'valid' or 'same', got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if not all(isinstance(p, (numbers.Integral, np.integer)) and not isinstance(p, bool) for p in padding):
            raise TypeError(f"padding must hold ints, got {padding!r}")
        out = tuple(int(p) for p in padding)
        if min(out) < 0:
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        return out
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


_geometry_cache: dict = {}  # memo of conv_geometry for plain arguments, see there


def plain(value):
    """value itself if it is an int or a str, as a tuple if a tuple or list of ints; else None.

    Only exact ints: a bool or a NumPy int compares equal to an int, and a memo keyed on
    them would let a call skip the check that refuses (or converts) it.
    """
    kind = type(value)
    if kind is int or kind is str:
        return value
    if kind is tuple or kind is list:
        for v in value:
            if type(v) is not int:
                return None
        return tuple(value)
    return None


def conv_geometry(x_shape, w_shape, stride, padding, dilation, groups, *, x_name="input", w_name="weight") -> ConvGeom:
    """Checks conv2d's shapes and parameters; x_shape is NCHW, w_shape (K, C/groups, kh, kw).

    Calls whose stride, padding and dilation are ints, strings or tuples/lists of ints and
    whose groups is an int (the common case; convkit.torch passes lists) are memoised: the
    checks cost more than a tiny layer's kernel, and a repeated call passed them already.
    Anything else (NumPy ints, bools) is checked anew.
    """
    key = None
    if type(groups) is int:
        key = (tuple(x_shape), tuple(w_shape), stride if type(stride) is int else plain(stride),
               padding if type(padding) is int else plain(padding),
               dilation if type(dilation) is int else plain(dilation), groups)
        try:
            geom = _geometry_cache.get(key)
        except TypeError:  # symbolic sizes (PyTorch's fake tensors under torch.compile) do not hash
            geom = key = None
        if geom is not None:
            return geom
        if key is not None and None in key[2:5]:
            key = None
    geom = _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups, x_name, w_name)
    if key is not None:
        if len(_geometry_cache) >= 1024:
            _geometry_cache.clear()
        _geometry_cache[key] = geom
    return geom


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups, x_name, w_name) -> ConvGeom:
    N, C, H, W = (int(s) for s in x_shape)
    K, Cg, kh, kw = (int(s) for s in w_shape)
    if type(groups) is not int and (not isinstance(groups, (numbers.Integral, np.integer)) or isinstance(groups, bool)):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups <= 0:
        raise ValueError(f"groups must be > 0, got {groups}")
    if C == 0 or H == 0 or W == 0:
        raise ValueError(f"{x_name} must have non-empty C, H, W, got NCHW shape {tuple(x_shape)}")
    if K == 0 or kh == 0 or kw == 0:
        raise ValueError(f"{w_name} must be non-empty, got shape {tuple(w_shape)}")
    if C % groups or K % groups:
        raise ValueError(f"groups={groups} must divide input channels C={C} ({x_name} NCHW shape {tuple(x_shape)}) "
                         f"and output channels K={K} ({w_name} shape {tuple(w_shape)})")
    if Cg * groups != C:
        raise ValueError(f"{w_name} shape {tuple(w_shape)} expects {Cg * groups} input channels "
                         f"(C/groups={Cg}, groups={groups}), {x_name} NCHW shape {tuple(x_shape)} has C={C}")
    stride = pair(stride, "stride", minimum=1)
    dilation = pair(dilation, "dilation", minimum=1)
    pad = resolve_conv_padding(padding, (H, W), (kh, kw), stride, dilation)
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if H + pad[0] + pad[1] < eh or W + pad[2] + pad[3] < ew:
        raise ValueError(f"kernel {kh}x{kw} (dilation {dilation}, extent {eh}x{ew}) is larger than the padded "
                         f"input {H + pad[0] + pad[1]}x{W + pad[2] + pad[3]} ({x_name} NCHW shape {tuple(x_shape)}, "
                         f"padding {pad})")
    OH = (H + pad[0] + pad[1] - eh) // stride[0] + 1
    OW = (W + pad[2] + pad[3] - ew) // stride[1] + 1
    return ConvGeom(N, C, H, W, K, kh, kw, stride, pad, dilation, groups, OH, OW)


def conv_transpose_geometry(x_shape, w_shape, stride, padding, output_padding, groups, dilation) -> tuple:
    """conv_transpose2d's shapes as the conv2d whose grad-input it is.

    Returns (geom, extra): geom describes conv2d from the transposed output (N, K, OH, OW)
    to the transposed input; extra = (rows, cols) of zeros the transposed input must be
    padded with at the bottom/right, nonzero only when output_padding >= stride (allowed
    when dilation > stride), where conv2d's floor would otherwise see more output rows.
    """
    N, Cin, H, W = (int(s) for s in x_shape)
    Cw, Kg, kh, kw = (int(s) for s in w_shape)
    stride = pair(stride, "stride", minimum=1)
    dilation = pair(dilation, "dilation", minimum=1)
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d padding must be an int or a pair, got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    oph, opw = pair(output_padding, "output_padding", minimum=0)
    for op, s, d, axis in ((oph, stride[0], dilation[0], "height"), (opw, stride[1], dilation[1], "width")):
        if op >= max(s, d):
            raise ValueError(f"output_padding ({oph}, {opw}) must be smaller than max(stride, dilation) "
                             f"in {axis}: stride {stride}, dilation {dilation}")
    if not isinstance(groups, (numbers.Integral, np.integer)) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if Cw != Cin or Cin % groups:
        raise ValueError(f"weight shape {tuple(w_shape)} must be (C, K/groups, kh, kw) with C={Cin} "
                         f"(input NCHW shape {tuple(x_shape)}) divisible by groups={groups}")
    if Cin == 0 or H == 0 or W == 0 or Kg == 0 or kh == 0 or kw == 0:
        raise ValueError(f"input {tuple(x_shape)} and weight {tuple(w_shape)} must be non-empty")
    OH = (H - 1) * stride[0] - 2 * ph + dilation[0] * (kh - 1) + oph + 1
    OW = (W - 1) * stride[1] - 2 * pw + dilation[1] * (kw - 1) + opw + 1
    if OH <= 0 or OW <= 0:
        raise ValueError(f"conv_transpose2d output would be {OH}x{OW}: padding {(ph, pw)} too large for input "
                         f"NCHW shape {tuple(x_shape)} and weight {tuple(w_shape)}")
    geom = conv_geometry((N, Kg * groups, OH, OW), (Cin, Kg, kh, kw), stride, (ph, pw), dilation, groups,
                         x_name="conv_transpose2d output", w_name="weight")
    return geom, (geom.OH - H, geom.OW - W)


def pool_output_size(n, k, s, p, d, ceil_mode) -> int:
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode, *, count_include_pad=True,
                  divisor_override=None, return_indices=True) -> PoolGeom:
    N, C, H, W = (int(s) for s in x_shape)
    kernel = pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else pair(
        stride, "stride", minimum=1)
    pad = pair(padding, "padding", minimum=0)
    dilation = pair(dilation, "dilation", minimum=1)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"padding {pad} must be at most half the kernel_size {kernel}")
    if divisor_override is not None:
        if not isinstance(divisor_override, (numbers.Integral, np.integer)) or divisor_override <= 0:
            raise ValueError(f"divisor_override must be a positive int, got {divisor_override!r}")
        divisor_override = int(divisor_override)
    if H == 0 or W == 0 or C == 0:
        raise ValueError(f"input must have non-empty C, H, W, got NCHW shape {tuple(x_shape)}")
    OH = pool_output_size(H, kernel[0], stride[0], pad[0], dilation[0], bool(ceil_mode))
    OW = pool_output_size(W, kernel[1], stride[1], pad[1], dilation[1], bool(ceil_mode))
    if OH <= 0 or OW <= 0:
        raise ValueError(f"kernel_size {kernel} (dilation {dilation}) is larger than the padded input: "
                         f"NCHW shape {tuple(x_shape)}, padding {pad}, output would be {OH}x{OW}")
    return PoolGeom(N, C, H, W, kernel[0], kernel[1], stride, pad, dilation, bool(ceil_mode), OH, OW,
                    bool(count_include_pad), divisor_override, bool(return_indices))


def maxout_groups(x_shape, k) -> int:
    """maxout2d's group size k: a positive int dividing the channel count (x_shape is NCHW)."""
    N, C, H, W = (int(s) for s in x_shape)
    if not isinstance(k, (numbers.Integral, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {k!r}")
    if k < 1 or C % k:
        raise ValueError(f"k must be a positive divisor of the channel count C={C} (input NCHW shape "
                         f"{tuple(x_shape)}), got k={k}")
    if C == 0 or H == 0 or W == 0:
        raise ValueError(f"input must have non-empty C, H, W, got NCHW shape {tuple(x_shape)}")
    return int(k)

