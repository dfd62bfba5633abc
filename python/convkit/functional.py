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
# Each runs the implementation `impl` (a registry row from lookup) in a layout it takes.
def _conv_forward(x, w, b, geom, activation, layout, impl):
    xa, have = _to_impl_layout(x, layout, impl)
    return _from_impl_layout(impl.fn(xa, w, b, geom, activation, have), have, layout)


def _conv_grad_input(gy, w, geom, layout, impl):
    ga, have = _to_impl_layout(gy, layout, impl)
    return _from_impl_layout(impl.fn(ga, w, geom, have), have, layout)


def _conv_grad_weight(gy, x, geom, layout, impl):
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


# -------------------------------------------------------------------------- call plans
# A repeated call of a public op on NumPy arrays goes straight to its kernels: a tiny
# layer's whole call is 2-3 us, and the checks and lookups cost as much or more
# (conv2d_backward took 8.9 us). The plan of a call is what its checks and algorithm
# lookups gave for the same op, array types, shapes and dtypes, parameters as given and
# thread count, so only the arrays' memory can differ, which the plan makes C-contiguous
# as the checks would. Kept only when the checks took the arrays as they are (see
# _plannable); forgotten with the auto choices (_registry.forget_auto_choices).
def _plan_key(op, arrays, params):
    """The call's key in call_plans, or None when plans do not serve it: an array that is
    not exactly a NumPy array (None stands for an absent one), or a parameter that is not
    an exact int, str, bool or None or a tuple/list of ints (_args.plain: a NumPy int or a
    bool compares equal to an int, but must still meet its check; a bool is keyed apart
    from the int it equals)."""
    key = [op, get_num_threads()]
    for a in arrays:
        if type(a) is np.ndarray:
            key += (a.shape, a.dtype)
        elif a is None:
            key.append(None)
        else:
            return None
    for p in params:
        kind = type(p)
        if kind is int or kind is str or p is None:
            key.append(p)
        elif kind is bool:
            key.append(_FLAGS[p])
        else:
            p = _args.plain(p)
            if p is None:
                return None
            key.append(p)
    return tuple(key)


_FLAGS = {False: ("False",), True: ("True",)}
_ndarray = np.ndarray


def _plan_for(op, arrays, params):
    """(key, plan) of a call: the plan kept for calls like it, else None (and the key None
    when plans do not serve the call). A plan's run(*arrays) takes the op's arrays as
    given (making them C-contiguous, as the checks would)."""
    key = _plan_key(op, arrays, params)
    return key, (None if key is None else call_plans.get(key))


def _keep(key, result, plan):
    """Keeps the plan a checked call made (if any, and if plans serve the call); returns
    the call's result."""
    if key is not None and plan is not None:
        remember_plan(key, plan)
    return result


def _c(a):
    return None if a is None else _contiguous(a)


class _Plan:
    """A checked call's kernels: run(*arrays) calls them as the checked call did; impls
    are the registry rows it runs (what algo="auto" chose, for explain and tests)."""

    __slots__ = ("run", "impls")

    def __init__(self, run, impls):
        self.run, self.impls = run, tuple(impls)


def _plannable(given, checked, impls, layout, device):
    """Whether a plan may replay this call: on the CPU, in a layout every implementation
    takes as it is, and with every array as the checks left it but for its memory order
    (a big-endian array, say, is converted by them: a plan would skip that)."""
    return device == "cpu" and all(layout in impl.layouts for impl in impls) and all(
        a is None or (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype)
        for a, b in zip(given, checked))


# ----------------------------------------------------------------------------- conv2d
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           layout="NCHW", algo="auto", device="cpu"):
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    input (N, C, H, W), weight (K, C/groups, kh, kw), bias (K,) or None. padding: int,
    pair, (top, bottom, left, right), "valid" or "same" (any stride; TensorFlow's rule).
    activation=None or "relu" is fused into the kernel's epilogue.
    """
    # The hottest call builds _plan_key's key inline when every argument is of the plain
    # kinds (_plan_key's loops cost 0.5 us, a fifth of a tiny layer's whole call).
    if type(input) is _ndarray and type(weight) is _ndarray and (bias is None or type(bias) is _ndarray) \
            and type(stride) is int and type(padding) is int and type(dilation) is int and type(groups) is int \
            and (activation is None or type(activation) is str) and type(layout) is str and type(algo) is str \
            and type(device) is str:
        key = ("conv2d", get_num_threads(), input.shape, input.dtype, weight.shape, weight.dtype,
               *((None,) if bias is None else (bias.shape, bias.dtype)), stride, padding, dilation, groups,
               activation, layout, algo, device)
        plan = call_plans.get(key)
    else:
        key, plan = _plan_for("conv2d", (input, weight, bias),
                              (stride, padding, dilation, groups, activation, layout, algo, device))
    if plan is not None:
        return plan.run(input, weight, bias)
    return _keep(key, *_conv2d_checked(input, weight, bias, stride, padding, dilation, groups, activation, layout,
                                       algo, device))


def _conv2d_checked(input, weight, bias, stride, padding, dilation, groups, activation, layout, algo, device):
    """conv2d's checked path: (y, plan or None). groups=None: depthwise, groups = C."""
    _check_activation(activation)
    x, w, b, lay = _conv_inputs(input, weight, bias, layout, device)
    if groups is None:
        groups = _depthwise_groups(x, w, lay)
    geom = _args.conv_geometry(_nchw_shape(x.shape, lay), w.shape, stride, padding, dilation, groups)
    impl = lookup("conv2d_forward", algo, device, geom, x.dtype, lay)
    y = _conv_forward(x, w, b, geom, activation, lay, impl)
    if not _plannable((input, weight, bias), (x, w, b), [impl], lay, device):
        return y, None
    return y, _Plan(lambda x_, w_, b_: impl.fn(_contiguous(x_), _contiguous(w_), _c(b_), geom, activation, lay),
                    [impl])


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, *, need_input=True,
                    need_weight=True, need_bias=True, layout="NCHW", algo="auto", device="cpu"):
    """Gradients of conv2d: (grad_input, grad_weight, grad_bias); None where not needed."""
    key, plan = _plan_for("conv2d_backward", (grad_output, input, weight),
                          (stride, padding, dilation, groups, need_input, need_weight, need_bias, layout, algo, device))
    if plan is not None:
        return plan.run(grad_output, input, weight)
    return _keep(key, *_conv2d_backward_checked(grad_output, input, weight, stride, padding, dilation, groups,
                                                need_input, need_weight, need_bias, layout, algo, device))


def _conv2d_backward_checked(grad_output, input, weight, stride, padding, dilation, groups, need_input, need_weight,
                             need_bias, layout, algo, device):
    """conv2d_backward's checked path: (grads, plan or None). groups=None: depthwise."""
    x, w, _, lay = _conv_inputs(input, weight, None, layout, device)
    if groups is None:
        groups = _depthwise_groups(x, w, lay)
    gy = _prepare(grad_output, "grad_output", device, lay)
    _args.same_dtype({"grad_output": gy, "input": x, "weight": w})
    geom = _args.conv_geometry(_nchw_shape(x.shape, lay), w.shape, stride, padding, dilation, groups)
    _check_grad_shape(gy, (geom.N, geom.K, geom.OH, geom.OW), lay, "conv2d's output shape")
    gi = lookup("conv2d_grad_input", algo, device, geom, gy.dtype, lay) if need_input else None
    gw = lookup("conv2d_grad_weight", algo, device, geom, gy.dtype, lay) if need_weight else None
    grads = (None if gi is None else _conv_grad_input(gy, w, geom, lay, gi),
             None if gw is None else _conv_grad_weight(gy, x, geom, lay, gw),
             _sum_bias(gy, lay) if need_bias else None)
    impls = [i for i in (gi, gw) if i is not None]
    if not _plannable((grad_output, input, weight), (gy, x, w), impls, lay, device):
        return grads, None
    return grads, _Plan(lambda gy_, x_, w_: (None if gi is None else gi.fn(_c(gy_), _c(w_), geom, lay),
                                             None if gw is None else gw.fn(_c(gy_), _c(x_), geom, lay),
                                             _sum_bias(gy_, lay) if need_bias else None), impls)


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
    key, plan = _plan_for("conv_transpose2d", (input, weight, bias),
                          (stride, padding, output_padding, groups, dilation, layout, algo, device))
    if plan is not None:
        return plan.run(input, weight, bias)
    x, w, _, lay = _conv_inputs(input, weight, None, layout, device)
    geom, extra = _args.conv_transpose_geometry(_nchw_shape(x.shape, lay), w.shape, stride, padding,
                                                output_padding, groups, dilation)
    b = _bias(bias, geom.C, device)
    _args.same_dtype({"input": x, "weight": w, "bias": b})
    impl = lookup("conv2d_grad_input", algo, device, geom, x.dtype, lay)
    y = _add_bias(_conv_grad_input(_pad_bottom_right(x, extra, lay), w, geom, lay, impl), b, lay)
    if not _plannable((input, weight, bias), (x, w, b), [impl], lay, device):
        return y
    return _keep(key, y, _Plan(lambda x_, w_, b_: _add_bias(
        impl.fn(_pad_bottom_right(_c(x_), extra, lay), _c(w_), geom, lay), b_, lay), [impl]))


def _add_bias(y, b, layout):
    if b is None:
        return y
    if isinstance(y, np.ndarray) and isinstance(b, np.ndarray):
        return y + (b if layout == "NHWC" else b.reshape(-1, 1, 1))
    from .cuda import add_bias

    return add_bias(y, b, layout)


def conv_transpose2d_backward(grad_output, input, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, *, need_input=True, need_weight=True, need_bias=True, layout="NCHW",
                              algo="auto", device="cpu"):
    """Gradients of conv_transpose2d: (grad_input, grad_weight, grad_bias).

    grad_input is conv2d forward of grad_output; grad_weight is conv2d's grad-weight with
    the roles of input and output swapped.
    """
    key, plan = _plan_for("conv_transpose2d_backward", (grad_output, input, weight),
                          (stride, padding, output_padding, groups, dilation, need_input, need_weight, need_bias,
                           layout, algo, device))
    if plan is not None:
        return plan.run(grad_output, input, weight)
    x, w, _, lay = _conv_inputs(input, weight, None, layout, device)
    gy = _prepare(grad_output, "grad_output", device, lay)
    _args.same_dtype({"grad_output": gy, "input": x, "weight": w})
    geom, extra = _args.conv_transpose_geometry(_nchw_shape(x.shape, lay), w.shape, stride, padding,
                                                output_padding, groups, dilation)
    _check_grad_shape(gy, (geom.N, geom.C, geom.H, geom.W), lay, "conv_transpose2d's output shape")
    fw = lookup("conv2d_forward", algo, device, geom, gy.dtype, lay) if need_input else None
    gw = lookup("conv2d_grad_weight", algo, device, geom, gy.dtype, lay) if need_weight else None
    grads = (None if fw is None else _crop_bottom_right(_conv_forward(gy, w, None, geom, None, lay, fw), extra, lay),
             None if gw is None else _conv_grad_weight(_pad_bottom_right(x, extra, lay), gy, geom, lay, gw),
             _sum_bias(gy, lay) if need_bias else None)
    impls = [i for i in (fw, gw) if i is not None]
    if not _plannable((grad_output, input, weight), (gy, x, w), impls, lay, device):
        return grads
    return _keep(key, grads, _Plan(lambda gy_, x_, w_: (
        None if fw is None else _crop_bottom_right(fw.fn(_c(gy_), _c(w_), None, geom, None, lay), extra, lay),
        None if gw is None else gw.fn(_pad_bottom_right(_c(x_), extra, lay), _c(gy_), geom, lay),
        _sum_bias(gy_, lay) if need_bias else None), impls))


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
    key, plan = _plan_for("depthwise_conv2d", (input, weight, bias),
                          (stride, padding, dilation, activation, layout, algo, device))
    if plan is not None:
        return plan.run(input, weight, bias)
    return _keep(key, *_conv2d_checked(input, weight, bias, stride, padding, dilation, None, activation, layout,
                                       algo, device))


def depthwise_conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, *, need_input=True,
                              need_weight=True, need_bias=True, layout="NCHW", algo="auto", device="cpu"):
    """Gradients of depthwise_conv2d: (grad_input, grad_weight, grad_bias)."""
    key, plan = _plan_for("depthwise_conv2d_backward", (grad_output, input, weight),
                          (stride, padding, dilation, need_input, need_weight, need_bias, layout, algo, device))
    if plan is not None:
        return plan.run(grad_output, input, weight)
    return _keep(key, *_conv2d_backward_checked(grad_output, input, weight, stride, padding, dilation, None,
                                                need_input, need_weight, need_bias, layout, algo, device))


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


def _pool_call(impl, arrays, geom, layout):
    """Runs a pooling implementation on arrays in `layout`, converting as it needs."""
    moved = [_to_impl_layout(a, layout, impl)[0] for a in arrays]
    have = layout if layout in impl.layouts else impl.layouts[0]
    out = impl.fn(*moved, geom, have)
    if isinstance(out, tuple):
        return tuple(_from_impl_layout(o, have, layout) for o in out)
    return _from_impl_layout(out, have, layout)


def _pool_checked(key, primitive, given, arrays, geom, layout, algo, device, pick=None):
    """A one-primitive pooling op's result, keeping its plan: the primitive's output, or
    pick(output) (max_pool2d's indices or not). arrays: the checked forms of the first
    given arrays, which the primitive takes (the rest only give shapes)."""
    impl = lookup(primitive, algo, device, geom)
    pick = pick or (lambda out: out)
    out = pick(_pool_call(impl, arrays, geom, layout))
    if not _plannable(given, arrays, [impl], layout, device):
        return out
    n = len(arrays)
    return _keep(key, out, _Plan(lambda *arrs: pick(impl.fn(*map(_c, arrs[:n]), geom, layout)), [impl]))


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False, *,
               layout="NCHW", algo="auto", device="cpu"):
    """Max pooling, as torch.nn.functional.max_pool2d. Indices are flat offsets within each H*W plane."""
    key, plan = _plan_for("max_pool2d", (input,),
                          (kernel_size, stride, padding, dilation, ceil_mode, return_indices, layout, algo, device))
    if plan is not None:
        return plan.run(input)
    x, lay = _pool_input(input, layout, device)
    geom = _args.pool_geometry(_nchw_shape(x.shape, lay), kernel_size, stride, padding, dilation, ceil_mode,
                               return_indices=return_indices)
    return _pool_checked(key, "max_pool2d", (input,), (x,), geom, lay, algo, device,
                         None if return_indices else (lambda out: out[0]))


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        indices=None, *, layout="NCHW", algo="auto", device="cpu"):
    """Gradient of max_pool2d: grad_output routed to each window's maximum (indices recomputed if None)."""
    key, plan = _plan_for("max_pool2d_backward", (grad_output, input, indices),
                          (kernel_size, stride, padding, dilation, ceil_mode, layout, algo, device))
    if plan is not None:
        return plan.run(grad_output, input, indices)
    x, lay = _pool_input(input, layout, device)
    gy = _prepare(grad_output, "grad_output", device, lay)
    _args.same_dtype({"grad_output": gy, "input": x})
    geom = _args.pool_geometry(_nchw_shape(x.shape, lay), kernel_size, stride, padding, dilation, ceil_mode)
    _check_grad_shape(gy, (geom.N, geom.C, geom.OH, geom.OW), lay, "max_pool2d's output shape")
    find = lookup("max_pool2d", algo, device, geom) if indices is None else None
    idx = None if find is not None else _pool_indices(indices, gy, device)
    back = lookup("max_pool2d_backward", algo, device, geom)
    gx = _pool_call(back, [gy, idx if find is None else _pool_call(find, [x], geom, lay)[1]], geom, lay)
    impls = [back] if find is None else [back, find]
    if not _plannable((grad_output, input, indices), (gy, x, idx), impls, lay, device):
        return gx
    return _keep(key, gx, _Plan(lambda gy_, x_, idx_: back.fn(
        _c(gy_), _c(idx_) if find is None else find.fn(_c(x_), geom, lay)[1], geom, lay), impls))


def _pool_indices(indices, gy, device):
    if device == "cpu":
        indices = np.asarray(indices)
    else:
        from .cuda import as_device_or_host_array

        indices = as_device_or_host_array(indices, "indices", dtypes=None)
    if tuple(indices.shape) != tuple(gy.shape) or np.dtype(indices.dtype) != np.int64:
        raise ValueError(f"indices must be int64 with grad_output's shape {_args.shape_of(gy)}, "
                         f"got {indices.dtype} {_args.shape_of(indices)}")
    return indices


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, layout="NCHW", algo="auto", device="cpu"):
    """Average pooling, as torch.nn.functional.avg_pool2d (same divisor rules)."""
    key, plan = _plan_for("avg_pool2d", (input,), (kernel_size, stride, padding, ceil_mode, count_include_pad,
                                                   divisor_override, layout, algo, device))
    if plan is not None:
        return plan.run(input)
    x, lay = _pool_input(input, layout, device)
    geom = _args.pool_geometry(_nchw_shape(x.shape, lay), kernel_size, stride, padding, 1, ceil_mode,
                               count_include_pad=count_include_pad, divisor_override=divisor_override)
    return _pool_checked(key, "avg_pool2d", (input,), (x,), geom, lay, algo, device)


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None, *, layout="NCHW", algo="auto", device="cpu"):
    """Gradient of avg_pool2d: each output's gradient spread over its window with the same divisor."""
    key, plan = _plan_for("avg_pool2d_backward", (grad_output, input),
                          (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, layout, algo,
                           device))
    if plan is not None:
        return plan.run(grad_output, input)
    x, lay = _pool_input(input, layout, device)
    gy = _prepare(grad_output, "grad_output", device, lay)
    _args.same_dtype({"grad_output": gy, "input": x})
    geom = _args.pool_geometry(_nchw_shape(x.shape, lay), kernel_size, stride, padding, 1, ceil_mode,
                               count_include_pad=count_include_pad, divisor_override=divisor_override)
    _check_grad_shape(gy, (geom.N, geom.C, geom.OH, geom.OW), lay, "avg_pool2d's output shape")
    return _pool_checked(key, "avg_pool2d_backward", (grad_output,), (gy,), geom, lay, algo, device)


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
    key, plan = _plan_for("maxout2d", (input,), (k, layout, algo, device))
    if plan is not None:
        return plan.run(input)
    x, lay = _pool_input(input, layout, device)
    groups = _args.maxout_groups(_nchw_shape(x.shape, lay), k)
    return _pool_checked(key, "maxout2d", (input,), (x,), groups, lay, algo, device)


def maxout2d_backward(grad_output, input, k, *, layout="NCHW", algo="auto", device="cpu"):
    """Gradient of maxout2d: grad_output routed to each group's maximum (recomputed from input)."""
    key, plan = _plan_for("maxout2d_backward", (grad_output, input), (k, layout, algo, device))
    if plan is not None:
        return plan.run(grad_output, input)
    x, lay = _pool_input(input, layout, device)
    gy = _prepare(grad_output, "grad_output", device, lay)
    _args.same_dtype({"grad_output": gy, "input": x})
    N, C, H, W = _nchw_shape(x.shape, lay)
    groups = _args.maxout_groups((N, C, H, W), k)
    _check_grad_shape(gy, (N, C // groups, H, W), lay, "maxout2d's output shape")
    return _pool_checked(key, "maxout2d_backward", (grad_output, input), (gy, x), groups, lay, algo, device)
