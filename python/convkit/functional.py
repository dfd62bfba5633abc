"""The public ops, with torch.nn.functional's signatures.

Each op checks its arguments (convkit._args), lays its arrays out as the chosen
implementation wants, and runs registry primitives (convkit._registry). Ops that are
compositions (conv_transpose2d, depthwise, separable, global pooling) are written here
once, over the primitives, so every algorithm and device gets them for free.

Common keyword-only arguments:
    layout: "NCHW" (default, PyTorch's) or "NHWC" (Keras'); weights keep torch's shape.
    algo:   "auto" (default), or a registered algorithm: "direct", "im2col", "reference".
    device: "cpu" (default) or "cuda".
"""
from __future__ import annotations

import numpy as np

from . import _args
from ._cpu import get_num_threads
from ._registry import call_plans, check_device, lookup, remember_plan

_contiguous = np.ascontiguousarray

__all__ = [
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "depthwise_conv2d", "depthwise_conv2d_backward", "separable_conv2d", "separable_conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "global_avg_pool2d", "global_avg_pool2d_backward", "global_max_pool2d", "global_max_pool2d_backward",
    "maxout2d", "maxout2d_backward",
]

_ACTIVATIONS = (None, "relu")


# ----------------------------------------------------------------------------- helpers
def _prepare(x, name, device, layout, ndim=4, what="(N, C, H, W)"):
    """An input as the device wants it: NumPy on the CPU, as given on CUDA."""
    if device == "cuda":
        from .cuda import as_device_or_host_array

        arr = as_device_or_host_array(x, name)
    else:
        arr = _args.as_array(x, name)
    _args.require_ndim(arr, name, ndim, what if ndim == 4 else "")
    return arr


def _nchw_shape(shape, layout):
    return (shape[0], shape[3], shape[1], shape[2]) if layout == "NHWC" else tuple(shape)


def _to_impl_layout(arr, layout, impl):
    """C-contiguous, in a layout the implementation takes; returns (array, its layout)."""
    if arr is None:
        return None, layout
    if layout in impl.layouts:
        return (np.ascontiguousarray(arr) if isinstance(arr, np.ndarray) else arr), layout
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{impl.algo}/{impl.device} takes layouts {impl.layouts}, not {layout} device arrays")
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2) if layout == "NHWC" else arr.transpose(0, 2, 3, 1)), \
        impl.layouts[0]


def _from_impl_layout(arr, have, want):
    if arr is None or have == want:
        return arr
    perm = (0, 2, 3, 1) if want == "NHWC" else (0, 3, 1, 2)
    return np.ascontiguousarray(arr.transpose(perm))


def _weight(w, name, device):
    arr = _prepare(w, name, device, "NCHW", 4, "(K, C/groups, kh, kw)")
    return np.ascontiguousarray(arr) if isinstance(arr, np.ndarray) else arr


def _bias(b, K, device):
    if b is None:
        return None
    arr = _prepare(b, "bias", device, "NCHW", 1)
    if arr.shape != (K,):
        raise ValueError(f"bias must have shape ({K},) to match the output channels, got {_args.shape_of(arr)}")
    return np.ascontiguousarray(arr) if isinstance(arr, np.ndarray) else arr


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")


def _sum_bias(grad_y, layout):
    axes = (0, 1, 2) if layout == "NHWC" else (0, 2, 3)
    if isinstance(grad_y, np.ndarray):
        return grad_y.sum(axis=axes)
    from .cuda import reduce_bias_grad

    return reduce_bias_grad(grad_y, layout)


def _check_grad_shape(grad_y, want_nchw, layout, what):
    want = (want_nchw[0], want_nchw[2], want_nchw[3], want_nchw[1]) if layout == "NHWC" else tuple(want_nchw)
    if tuple(grad_y.shape) != want:
        raise ValueError(f"grad_output has shape {_args.shape_of(grad_y)}, expected {want} ({what}, layout {layout})")


# ----------------------------------------------------------------------- conv primitives
def _conv_forward(x, w, b, geom, activation, layout, algo, device):
    impl = lookup("conv2d_forward", algo, device, geom, x.dtype, layout)
    xa, have = _to_impl_layout(x, layout, impl)
    return _from_impl_layout(impl.fn(xa, w, b, geom, activation, have), have, layout)


def _conv_grad_input(gy, w, geom, layout, algo, device):
    impl = lookup("conv2d_grad_input", algo, device, geom, gy.dtype, layout)
    ga, have = _to_impl_layout(gy, layout, impl)
    return _from_impl_layout(impl.fn(ga, w, geom, have), have, layout)


def _conv_grad_weight(gy, x, geom, layout, algo, device):
    impl = lookup("conv2d_grad_weight", algo, device, geom, gy.dtype, layout)
    ga, have = _to_impl_layout(gy, layout, impl)
    xa, _ = _to_impl_layout(x, layout, impl)
    return impl.fn(ga, xa, geom, have)


def _conv_inputs(input, weight, bias, layout, device, names=("input", "weight")):
    layout = _args.check_layout(layout)
    check_device(device)
    x = _prepare(input, names[0], device, layout)
    w = _weight(weight, names[1], device)
    b = _bias(bias, w.shape[0], device) if bias is not None else None
    _args.same_dtype({names[0]: x, names[1]: w, "bias": b})
    return x, w, b, layout


# ----------------------------------------------------------------------------- conv2d
def _conv2d_plan(x, w, b, stride, padding, dilation, groups, activation, layout, algo, device) -> tuple:
    """(key, plan) of a conv2d call in call_plans: the plan is None when the call is not
    there yet, the key None when the memo does not serve the call: not all NumPy arrays,
    or an unhashable argument. The key holds everything the call's checks and algorithm
    choice read: array types, shapes and dtypes, the parameters as given, the threads.
    A parameter that is not an exact int (or str, or tuple/list of ints) is None there
    and never stored (a bool or a NumPy int compares equal to an int but must still meet
    its check, see _args.plain)."""
    if type(x) is not np.ndarray or type(w) is not np.ndarray or (b is not None and type(b) is not np.ndarray) \
            or type(groups) is not int:
        return None, None
    key = (x.shape, x.dtype, w.shape, w.dtype, None if b is None else (b.shape, b.dtype),
           stride if type(stride) is int else _args.plain(stride),
           padding if type(padding) is int else _args.plain(padding),
           dilation if type(dilation) is int else _args.plain(dilation),
           groups, activation, layout, algo, device, get_num_threads())
    try:
        return key, call_plans.get(key)
    except TypeError:
        return None, None


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           layout="NCHW", algo="auto", device="cpu"):
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    input (N, C, H, W), weight (K, C/groups, kh, kw), bias (K,) or None. padding: int,
    pair, (top, bottom, left, right), "valid" or "same" (any stride; TensorFlow's rule).
    activation=None or "relu" is fused into the kernel's epilogue.
    """
    # A repeated call of NumPy arrays goes straight to its kernel (a tiny layer's whole
    # call is about 2 us, the checks below cost as much): its plan holds what the checks
    # and algo="auto" gave for the same types, shapes, dtypes, parameters and threads, so
    # only the arrays' memory can differ, and ascontiguousarray makes that what the
    # kernel reads, as _to_impl_layout does below.
    key, plan = _conv2d_plan(input, weight, bias, stride, padding, dilation, groups, activation, layout, algo, device)
    if plan is not None:
        geom, fn, layout = plan
        return fn(_contiguous(input), _contiguous(weight), None if bias is None else _contiguous(bias), geom,
                  activation, layout)
    _check_activation(activation)
    x, w, b, layout = _conv_inputs(input, weight, bias, layout, device)
    geom = _args.conv_geometry(_nchw_shape(x.shape, layout), w.shape, stride, padding, dilation, groups)
    impl = lookup("conv2d_forward", algo, device, geom, x.dtype, layout)
    # stored only when the checks took the arrays as they are: a big-endian array is
    # converted by them (as_array), and the plan would hand the kernel the original
    if key is not None and None not in key[5:8] and device == "cpu" and layout in impl.layouts \
            and x.dtype == input.dtype and w.dtype == weight.dtype and (b is None or b.dtype == bias.dtype):
        remember_plan(key, (geom, impl.fn, layout))
    xa, have = _to_impl_layout(x, layout, impl)
    return _from_impl_layout(impl.fn(xa, w, b, geom, activation, have), have, layout)


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, *, need_input=True,
                    need_weight=True, need_bias=True, layout="NCHW", algo="auto", device="cpu"):
    """Gradients of conv2d: (grad_input, grad_weight, grad_bias); None where not needed."""
    x, w, _, layout = _conv_inputs(input, weight, None, layout, device)
    gy = _prepare(grad_output, "grad_output", device, layout)
    _args.same_dtype({"grad_output": gy, "input": x, "weight": w})
    geom = _args.conv_geometry(_nchw_shape(x.shape, layout), w.shape, stride, padding, dilation, groups)
    _check_grad_shape(gy, (geom.N, geom.K, geom.OH, geom.OW), layout, "conv2d's output shape")
    gx = _conv_grad_input(gy, w, geom, layout, algo, device) if need_input else None
    gw = _conv_grad_weight(gy, x, geom, layout, algo, device) if need_weight else None
    gb = _sum_bias(gy, layout) if need_bias else None
    return gx, gw, gb


# ------------------------------------------------------------------- conv_transpose2d
def _pad_bottom_right(x, extra, layout):
    """Zero rows/cols appended so conv2d's floor sees the transposed input's full size."""
    if extra == (0, 0):
        return x
    if not isinstance(x, np.ndarray):
        from .cuda import pad_bottom_right

        return pad_bottom_right(x, extra, layout)
    spec = [(0, 0), (0, extra[0]), (0, extra[1]), (0, 0)] if layout == "NHWC" else \
        [(0, 0), (0, 0), (0, extra[0]), (0, extra[1])]
    return np.pad(x, spec)


def _crop_bottom_right(x, extra, layout):
    if extra == (0, 0):
        return x
    if not isinstance(x, np.ndarray):
        from .cuda import crop_bottom_right

        return crop_bottom_right(x, extra, layout)
    h, w = x.shape[1:3] if layout == "NHWC" else x.shape[2:4]
    sl = (slice(None), slice(0, h - extra[0]), slice(0, w - extra[1])) if layout == "NHWC" else \
        (slice(None), slice(None), slice(0, h - extra[0]), slice(0, w - extra[1]))
    return np.ascontiguousarray(x[sl])


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     layout="NCHW", algo="auto", device="cpu"):
    """Transposed convolution, as torch.nn.functional.conv_transpose2d (groups before dilation).

    input (N, C, H, W), weight (C, K/groups, kh, kw). Output size per dim:
    (H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1. It is conv2d's
    grad-input: the same kernels compute it.
    """
    x, w, b, layout = _conv_inputs(input, weight, None, layout, device)
    geom, extra = _args.conv_transpose_geometry(_nchw_shape(x.shape, layout), w.shape, stride, padding,
                                                output_padding, groups, dilation)
    b = _bias(bias, geom.C, device)
    _args.same_dtype({"input": x, "weight": w, "bias": b})
    y = _conv_grad_input(_pad_bottom_right(x, extra, layout), w, geom, layout, algo, device)
    if b is not None and isinstance(y, np.ndarray) and isinstance(b, np.ndarray):
        y = y + (b if layout == "NHWC" else b.reshape(-1, 1, 1))
    elif b is not None:
        from .cuda import add_bias

        y = add_bias(y, b, layout)
    return y


def conv_transpose2d_backward(grad_output, input, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, *, need_input=True, need_weight=True, need_bias=True, layout="NCHW",
                              algo="auto", device="cpu"):
    """Gradients of conv_transpose2d: (grad_input, grad_weight, grad_bias).

    grad_input is conv2d forward of grad_output; grad_weight is conv2d's grad-weight with
    the roles of input and output swapped.
    """
    x, w, _, layout = _conv_inputs(input, weight, None, layout, device)
    gy = _prepare(grad_output, "grad_output", device, layout)
    _args.same_dtype({"grad_output": gy, "input": x, "weight": w})
    geom, extra = _args.conv_transpose_geometry(_nchw_shape(x.shape, layout), w.shape, stride, padding,
                                                output_padding, groups, dilation)
    _check_grad_shape(gy, (geom.N, geom.C, geom.H, geom.W), layout, "conv_transpose2d's output shape")
    gx = gw = gb = None
    if need_input:
        gx = _crop_bottom_right(_conv_forward(gy, w, None, geom, None, layout, algo, device), extra, layout)
    if need_weight:
        gw = _conv_grad_weight(_pad_bottom_right(x, extra, layout), gy, geom, layout, algo, device)
    if need_bias:
        gb = _sum_bias(gy, layout)
    return gx, gw, gb


# ------------------------------------------------------------ depthwise and separable
def _depthwise_groups(x, w, layout):
    C = _nchw_shape(x.shape, layout)[1]
    if C == 0:  # before the modulo below
        raise ValueError(f"input must have non-empty C, got shape {_args.shape_of(x)} (layout {layout})")
    if w.shape[1] != 1 or w.shape[0] % C:
        raise ValueError(f"depthwise weight must be (C*multiplier, 1, kh, kw) with C={C}, got {_args.shape_of(w)}")
    return C


def depthwise_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, *, activation=None, layout="NCHW",
                     algo="auto", device="cpu"):
    """Depthwise convolution: groups == C, weight (C*multiplier, 1, kh, kw)."""
    _check_activation(activation)
    x, w, b, layout = _conv_inputs(input, weight, bias, layout, device)
    C = _depthwise_groups(x, w, layout)
    geom = _args.conv_geometry(_nchw_shape(x.shape, layout), w.shape, stride, padding, dilation, C)
    return _conv_forward(x, w, b, geom, activation, layout, algo, device)


def depthwise_conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, *, need_input=True,
                              need_weight=True, need_bias=True, layout="NCHW", algo="auto", device="cpu"):
    """Gradients of depthwise_conv2d: (grad_input, grad_weight, grad_bias)."""
    x, w, _, layout = _conv_inputs(input, weight, None, layout, device)
    return conv2d_backward(grad_output, x, w, stride, padding, dilation, _depthwise_groups(x, w, layout),
                           need_input=need_input, need_weight=need_weight, need_bias=need_bias, layout=layout,
                           algo=algo, device=device)


def _separable_inputs(input, depthwise_weight, pointwise_weight, bias, layout, device, grad_output=None):
    """Checked arrays of separable_conv2d(_backward), each error under its own argument's name.

    The pointwise weight is a 1x1 conv over the depthwise output: (K, C*m, 1, 1).
    """
    x, dw, _, layout = _conv_inputs(input, depthwise_weight, None, layout, device, ("input", "depthwise_weight"))
    pw = _weight(pointwise_weight, "pointwise_weight", device)
    if pw.shape[1] != dw.shape[0] or tuple(pw.shape[2:]) != (1, 1):
        raise ValueError(f"pointwise_weight must have shape (K, {dw.shape[0]}, 1, 1) to follow depthwise_weight "
                         f"{_args.shape_of(dw)}, got {_args.shape_of(pw)}")
    b = _bias(bias, pw.shape[0], device)
    gy = None if grad_output is None else _prepare(grad_output, "grad_output", device, layout)
    _args.same_dtype({"grad_output": gy, "input": x, "depthwise_weight": dw, "pointwise_weight": pw, "bias": b})
    return x, dw, pw, b, gy, layout


def separable_conv2d(input, depthwise_weight, pointwise_weight, bias=None, stride=1, padding=0, dilation=1, *,
                     activation=None, layout="NCHW", algo="auto", device="cpu"):
    """Depthwise (C*m, 1, kh, kw) then pointwise (K, C*m, 1, 1) convolution; bias after the pointwise."""
    x, dw, pw, b, _, layout = _separable_inputs(input, depthwise_weight, pointwise_weight, bias, layout, device)
    kw = dict(layout=layout, algo=algo, device=device)
    mid = depthwise_conv2d(x, dw, None, stride, padding, dilation, **kw)
    return conv2d(mid, pw, b, activation=activation, **kw)


def separable_conv2d_backward(grad_output, input, depthwise_weight, pointwise_weight, stride=1, padding=0,
                              dilation=1, *, layout="NCHW", algo="auto", device="cpu"):
    """Gradients of separable_conv2d: (grad_input, grad_depthwise_weight, grad_pointwise_weight, grad_bias)."""
    x, dw, pw, _, gy, layout = _separable_inputs(input, depthwise_weight, pointwise_weight, None, layout, device,
                                                 grad_output)
    kw = dict(layout=layout, algo=algo, device=device)
    mid = depthwise_conv2d(x, dw, None, stride, padding, dilation, **kw)
    g_mid, g_pw, gb = conv2d_backward(gy, mid, pw, **kw)
    gx, g_dw, _ = depthwise_conv2d_backward(g_mid, x, dw, stride, padding, dilation, need_bias=False, **kw)
    return gx, g_dw, g_pw, gb


# ----------------------------------------------------------------------------- pooling
def _pool_input(input, layout, device):
    layout = _args.check_layout(layout)
    check_device(device)
    return _prepare(input, "input", device, layout), layout


def _pool_run(primitive, arrays, geom, layout, algo, device):
    impl = lookup(primitive, algo, device, geom)
    moved = [_to_impl_layout(a, layout, impl)[0] for a in arrays]
    have = layout if layout in impl.layouts else impl.layouts[0]
    out = impl.fn(*moved, geom, have)
    if isinstance(out, tuple):
        return tuple(_from_impl_layout(o, have, layout) for o in out)
    return _from_impl_layout(out, have, layout)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False, *,
               layout="NCHW", algo="auto", device="cpu"):
    """Max pooling, as torch.nn.functional.max_pool2d. Indices are flat offsets within each H*W plane."""
    x, layout = _pool_input(input, layout, device)
    geom = _args.pool_geometry(_nchw_shape(x.shape, layout), kernel_size, stride, padding, dilation, ceil_mode,
                               return_indices=return_indices)
    y, idx = _pool_run("max_pool2d", [x], geom, layout, algo, device)
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        indices=None, *, layout="NCHW", algo="auto", device="cpu"):
    """Gradient of max_pool2d: grad_output routed to each window's maximum (indices recomputed if None)."""
    x, layout = _pool_input(input, layout, device)
    gy = _prepare(grad_output, "grad_output", device, layout)
    _args.same_dtype({"grad_output": gy, "input": x})
    geom = _args.pool_geometry(_nchw_shape(x.shape, layout), kernel_size, stride, padding, dilation, ceil_mode)
    _check_grad_shape(gy, (geom.N, geom.C, geom.OH, geom.OW), layout, "max_pool2d's output shape")
    if indices is None:
        _, indices = _pool_run("max_pool2d", [x], geom, layout, algo, device)
    else:
        if device == "cpu":
            indices = np.asarray(indices)
        else:
            from .cuda import as_device_or_host_array

            indices = as_device_or_host_array(indices, "indices", dtypes=None)
        if tuple(indices.shape) != tuple(gy.shape) or np.dtype(indices.dtype) != np.int64:
            raise ValueError(f"indices must be int64 with grad_output's shape {_args.shape_of(gy)}, "
                             f"got {indices.dtype} {_args.shape_of(indices)}")
    return _pool_run("max_pool2d_backward", [gy, indices], geom, layout, algo, device)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, layout="NCHW", algo="auto", device="cpu"):
    """Average pooling, as torch.nn.functional.avg_pool2d (same divisor rules)."""
    x, layout = _pool_input(input, layout, device)
    geom = _args.pool_geometry(_nchw_shape(x.shape, layout), kernel_size, stride, padding, 1, ceil_mode,
                               count_include_pad=count_include_pad, divisor_override=divisor_override)
    return _pool_run("avg_pool2d", [x], geom, layout, algo, device)


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None, *, layout="NCHW", algo="auto", device="cpu"):
    """Gradient of avg_pool2d: each output's gradient spread over its window with the same divisor."""
    x, layout = _pool_input(input, layout, device)
    gy = _prepare(grad_output, "grad_output", device, layout)
    _args.same_dtype({"grad_output": gy, "input": x})
    geom = _args.pool_geometry(_nchw_shape(x.shape, layout), kernel_size, stride, padding, 1, ceil_mode,
                               count_include_pad=count_include_pad, divisor_override=divisor_override)
    _check_grad_shape(gy, (geom.N, geom.C, geom.OH, geom.OW), layout, "avg_pool2d's output shape")
    return _pool_run("avg_pool2d_backward", [gy], geom, layout, algo, device)


def _global_kernel(x, layout):
    return _nchw_shape(x.shape, layout)[2:]


def global_avg_pool2d(input, *, layout="NCHW", algo="auto", device="cpu"):
    """Mean over H and W: (N, C, 1, 1) (or (N, 1, 1, C) in NHWC)."""
    x, layout = _pool_input(input, layout, device)
    return avg_pool2d(x, _global_kernel(x, layout), layout=layout, algo=algo, device=device)


def global_avg_pool2d_backward(grad_output, input, *, layout="NCHW", algo="auto", device="cpu"):
    x, layout = _pool_input(input, layout, device)
    return avg_pool2d_backward(grad_output, x, _global_kernel(x, layout), layout=layout, algo=algo, device=device)


def global_max_pool2d(input, return_indices=False, *, layout="NCHW", algo="auto", device="cpu"):
    """Max over H and W: (N, C, 1, 1); indices are flat offsets within each H*W plane."""
    x, layout = _pool_input(input, layout, device)
    return max_pool2d(x, _global_kernel(x, layout), return_indices=return_indices, layout=layout, algo=algo,
                      device=device)


def global_max_pool2d_backward(grad_output, input, indices=None, *, layout="NCHW", algo="auto", device="cpu"):
    x, layout = _pool_input(input, layout, device)
    return max_pool2d_backward(grad_output, x, _global_kernel(x, layout), indices=indices, layout=layout, algo=algo,
                               device=device)


def maxout2d(input, k, *, layout="NCHW", algo="auto", device="cpu"):
    """Maxout across channels: the max over each group of k consecutive channels.

    (N, C, H, W) -> (N, C/k, H, W); ties take the group's first channel, NaN propagates.
    """
    x, layout = _pool_input(input, layout, device)
    k = _args.maxout_groups(_nchw_shape(x.shape, layout), k)
    return _pool_run("maxout2d", [x], k, layout, algo, device)


def maxout2d_backward(grad_output, input, k, *, layout="NCHW", algo="auto", device="cpu"):
    """Gradient of maxout2d: grad_output routed to each group's maximum (recomputed from input)."""
    x, layout = _pool_input(input, layout, device)
    gy = _prepare(grad_output, "grad_output", device, layout)
    _args.same_dtype({"grad_output": gy, "input": x})
    N, C, H, W = _nchw_shape(x.shape, layout)
    k = _args.maxout_groups((N, C, H, W), k)
    _check_grad_shape(gy, (N, C // k, H, W), layout, "maxout2d's output shape")
    return _pool_run("maxout2d_backward", [gy, x], k, layout, algo, device)
