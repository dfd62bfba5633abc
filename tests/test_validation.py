"""Bad input to every public op, and to the C++ bindings directly: always a TypeError or
ValueError whose message names the argument and shows the shapes, never a crash."""
import inspect
import re

import numpy as np
import pytest

import convkit
from convkit import _args, _cpu
from convkit import reference as ref
from helpers import cpu_algos
from public_ops import OPS, to_nhwc

X = np.random.default_rng(0).standard_normal((2, 3, 7, 6))  # NCHW
W = np.random.default_rng(1).standard_normal((4, 3, 3, 3))


def _shape(a):
    return re.escape(str(tuple(a.shape)))


def _array_args(op):
    names = list(inspect.signature(op.fn).parameters)[:len(op.shapes)]
    return [pytest.param(op, i, id=f"{op.id}-{name}") for i, name in enumerate(names)]


def _arg_name(op, i):
    return list(inspect.signature(op.fn).parameters)[i]


ARRAY_ARGS = [p for op in OPS for p in _array_args(op)]


def _with(arrays, i, value):
    return [value if j == i else a for j, a in enumerate(arrays)]


# ------------------------------------------------------------------------ every op, every array argument
@pytest.mark.parametrize("op, i", ARRAY_ARGS)
def test_wrong_ndim(op, i):
    arrays = op.arrays(np.float64)
    bad = arrays[i][0] if arrays[i].ndim == 4 else arrays[i][None]
    with pytest.raises(ValueError, match=rf"{_arg_name(op, i)} must be {arrays[i].ndim}-D.*{_shape(bad)}"):
        op.run(_with(arrays, i, bad))


@pytest.mark.parametrize("dtype", [np.int64, np.complex128, np.float16, np.bool_])
@pytest.mark.parametrize("op, i", ARRAY_ARGS)
def test_unsupported_dtype(op, i, dtype):
    arrays = op.arrays(np.float64)
    bad = arrays[i].astype(dtype)
    with pytest.raises(TypeError, match=rf"{_arg_name(op, i)} must be float32 or float64, got "
                                        rf"{np.dtype(dtype).name} with shape {_shape(bad)}"):
        op.run(_with(arrays, i, bad))


@pytest.mark.parametrize("op, i", [p for p in ARRAY_ARGS if len(p.values[0].shapes) > 1])
def test_mismatched_dtypes(op, i):
    arrays = op.arrays(np.float64)
    bad = arrays[i].astype(np.float32)
    with pytest.raises(TypeError, match=rf"dtypes must match: .*{_arg_name(op, i)} float32 {_shape(bad)}"):
        op.run(_with(arrays, i, bad))


def test_non_array_input():
    with pytest.raises(TypeError, match="input must be an array.*list"):
        convkit.conv2d(X.tolist(), W)
    with pytest.raises(TypeError, match="weight must be an array.*str"):
        convkit.conv2d(X, "weights")


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.id)
def test_bad_layout_algo_device(op):
    arrays = op.arrays(np.float64)
    with pytest.raises(ValueError, match=r"layout must be one of \('NCHW', 'NHWC'\), got 'NCWH'"):
        op.run(arrays, layout="NCWH")
    with pytest.raises(ValueError, match="algo='fft' is not available") as info:
        op.run(arrays, algo="fft")
    for valid in ["auto", *cpu_algos(*op.primitives)]:
        assert repr(valid) in str(info.value), f"{valid!r} missing from: {info.value}"
    with pytest.raises(ValueError, match="algo must be a string"):
        op.run(arrays, algo=None)
    with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'cuda'\), got 'gpu'"):
        op.run(arrays, device="gpu")


@pytest.mark.parametrize("op", [op for op in OPS if op.name.endswith("_backward")], ids=lambda op: op.id)
def test_grad_output_of_the_wrong_shape(op):
    arrays = op.arrays(np.float64)
    gy = arrays[0]
    bad = np.zeros(gy.shape[:2] + (gy.shape[2] + 1, gy.shape[3]))
    with pytest.raises(ValueError, match=rf"grad_output has shape {_shape(bad)}, expected {_shape(gy)}"):
        op.run(_with(arrays, 0, bad))
    nhwc = [to_nhwc(a) if act else a for a, act in zip(_with(arrays, 0, bad), op.activations)]
    with pytest.raises(ValueError, match=rf"grad_output has shape {_shape(nhwc[0])}, expected "
                                         rf"{_shape(to_nhwc(gy))} .*layout NHWC"):
        op.run(nhwc, layout="NHWC")


# ------------------------------------------------------------------------ conv parameters
def _conv(x=X, w=W, **kw):
    return lambda: convkit.conv2d(x, w, **kw)


SX = re.escape("(2, 3, 7, 6)")
CONV_ERRORS = [
    # channels and groups: name the weight and show both shapes
    (_conv(w=np.ones((4, 2, 3, 3))), ValueError, rf"weight shape \(4, 2, 3, 3\) expects 2 input channels.*{SX}.*C=3"),
    (_conv(groups=2), ValueError, rf"groups=2 must divide input channels C=3.*{SX}.*weight shape \(4, 3, 3, 3\)"),
    (_conv(x=np.ones((1, 4, 5, 5)), w=np.ones((3, 2, 3, 3)), groups=2), ValueError,
     r"groups=2 must divide .* output channels K=3 \(weight shape \(3, 2, 3, 3\)\)"),
    (_conv(groups=0), ValueError, "groups must be > 0, got 0"),
    (_conv(groups=-3), ValueError, "groups must be > 0, got -3"),
    (_conv(groups=1.5), TypeError, r"groups must be an int, got 1\.5"),
    (_conv(groups=True), TypeError, "groups must be an int, got True"),
    # stride, dilation, padding values
    (_conv(stride=0), ValueError, "stride must be >= 1, got 0"),
    (_conv(stride=(1, -2)), ValueError, r"stride must be >= 1, got \(1, -2\)"),
    (_conv(stride=1.0), TypeError, r"stride must be an int or a pair of ints, got 1\.0"),
    (_conv(stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair of ints, got \(1, 2, 3\)"),
    (_conv(dilation=0), ValueError, "dilation must be >= 1, got 0"),
    (_conv(dilation=(0, 1)), ValueError, r"dilation must be >= 1, got \(0, 1\)"),
    (_conv(padding=-1), ValueError, "padding must be >= 0, got -1"),
    (_conv(padding=(1, -1)), ValueError, r"padding must be >= 0, got \(1, -1\)"),
    (_conv(padding=(0, 0, -1, 0)), ValueError, r"padding must be >= 0, got \(0, 0, -1, 0\)"),
    (_conv(padding=(0, 0, 1.5, 0)), TypeError, r"padding must hold ints, got \(0, 0, 1\.5, 0\)"),
    (_conv(padding=(1, 1, 1)), TypeError, r"padding must be an int or a pair of ints, got \(1, 1, 1\)"),
    (_conv(padding="full"), ValueError, "padding must be an int, a pair, a 4-tuple, 'valid' or 'same', got 'full'"),
    # kernel larger than the padded input: the kernel, its extent, the padded and input shapes
    (_conv(w=np.ones((4, 3, 9, 3))), ValueError,
     rf"kernel 9x3 \(dilation \(1, 1\), extent 9x3\) is larger than the padded input 7x6 .*{SX}"),
    (_conv(w=np.ones((4, 3, 3, 3)), dilation=(1, 3)), ValueError,
     rf"extent 3x7\) is larger than the padded input 7x6.*{SX}"),
    (_conv(w=np.ones((4, 3, 9, 9)), padding=1), ValueError,
     r"larger than the padded input 9x8 .*padding \(1, 1, 1, 1\)"),
    (_conv(w=np.ones((4, 3, 0, 3))), ValueError, r"weight must be non-empty, got shape \(4, 3, 0, 3\)"),
    (_conv(x=np.ones((2, 3, 0, 6))), ValueError, r"input must have non-empty C, H, W, got NCHW shape \(2, 3, 0, 6\)"),
    # bias and activation
    (_conv(bias=np.ones(5)), ValueError, r"bias must have shape \(4,\) to match the output channels, got \(5,\)"),
    (_conv(bias=np.ones((4, 1))), ValueError, r"bias must be 1-D.*\(4, 1\)"),
    (_conv(activation="gelu"), ValueError, r"activation must be one of \(None, 'relu'\), got 'gelu'"),
]


@pytest.mark.parametrize("call, exc, message", CONV_ERRORS)
def test_conv2d_bad_parameters(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_conv2d_backward_checks_like_conv2d():
    gy = np.zeros((2, 4, 5, 4))
    with pytest.raises(ValueError, match=r"weight shape \(4, 2, 3, 3\) expects 2 input channels"):
        convkit.conv2d_backward(gy, X, np.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        convkit.conv2d_backward(gy, X, W, stride=0)
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 4, 5, 4\), expected \(2, 4, 3, 2\)"):
        convkit.conv2d_backward(gy, X, W, stride=2)  # grad_output fits stride 1, not 2


def _transpose(x=X, w=np.ones((3, 2, 3, 3)), **kw):
    return lambda: convkit.conv_transpose2d(x, w, **kw)


TRANSPOSE_ERRORS = [
    (_transpose(stride=2, output_padding=2), ValueError,
     r"output_padding \(2, 2\) must be smaller than max\(stride, dilation\) in height: "
     r"stride \(2, 2\), dilation \(1, 1\)"),
    (_transpose(output_padding=1), ValueError, r"output_padding \(1, 1\) must be smaller than max\(stride, dilation\)"),
    (_transpose(stride=(1, 2), dilation=(3, 1), output_padding=(2, 2)), ValueError,
     r"must be smaller than max\(stride, dilation\) in width"),
    (_transpose(output_padding=-1), ValueError, "output_padding must be >= 0, got -1"),
    (_transpose(padding="same"), ValueError, "conv_transpose2d padding must be an int or a pair, got 'same'"),
    (_transpose(padding=(0, 0, 1, 1)), TypeError, r"padding must be an int or a pair of ints"),
    (_transpose(padding=-1), ValueError, "padding must be >= 0, got -1"),
    (_transpose(stride=0), ValueError, "stride must be >= 1, got 0"),
    (_transpose(dilation=-1), ValueError, "dilation must be >= 1, got -1"),
    (_transpose(w=np.ones((4, 2, 3, 3))), ValueError,
     rf"weight shape \(4, 2, 3, 3\) must be \(C, K/groups, kh, kw\) with C=3 \(input NCHW shape {SX}\)"),
    (_transpose(groups=2), ValueError, r"divisible by groups=2"),
    (_transpose(groups=0), ValueError, "groups must be a positive int, got 0"),
    (_transpose(x=np.ones((1, 3, 1, 1)), w=np.ones((3, 2, 1, 1)), padding=1), ValueError,
     r"output would be -1x-1: padding \(1, 1\) too large for input NCHW shape \(1, 3, 1, 1\)"),
    (_transpose(bias=np.ones(3)), ValueError, r"bias must have shape \(2,\) to match the output channels, got \(3,\)"),
]


@pytest.mark.parametrize("call, exc, message", TRANSPOSE_ERRORS)
def test_conv_transpose2d_bad_parameters(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_depthwise_and_separable_bad_weights():
    with pytest.raises(ValueError, match=r"depthwise weight must be \(C\*multiplier, 1, kh, kw\) with C=3, "
                                         r"got \(6, 3, 3, 3\)"):
        convkit.depthwise_conv2d(X, np.ones((6, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"with C=3, got \(4, 1, 3, 3\)"):
        convkit.depthwise_conv2d(X, np.ones((4, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"with C=3, got \(4, 1, 3, 3\)"):
        convkit.depthwise_conv2d_backward(np.zeros((2, 4, 5, 4)), X, np.ones((4, 1, 3, 3)))
    dw = np.ones((6, 1, 3, 3))
    with pytest.raises(ValueError, match=r"pointwise_weight must have shape \(K, 6, 1, 1\) to follow depthwise_weight "
                                         r"\(6, 1, 3, 3\), got \(5, 6, 3, 3\)"):
        convkit.separable_conv2d(X, dw, np.ones((5, 6, 3, 3)))
    with pytest.raises(ValueError, match=r"got \(5, 3, 1, 1\)"):
        convkit.separable_conv2d_backward(np.zeros((2, 5, 7, 6)), X, dw, np.ones((5, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"depthwise weight .* got \(6, 2, 3, 3\)"):
        convkit.separable_conv2d(X, np.ones((6, 2, 3, 3)), np.ones((5, 6, 1, 1)))


POOL_ERRORS = [
    (lambda: convkit.max_pool2d(X, 0), ValueError, "kernel_size must be >= 1, got 0"),
    (lambda: convkit.max_pool2d(X, 2, stride=0), ValueError, "stride must be >= 1, got 0"),
    (lambda: convkit.max_pool2d(X, 2, dilation=0), ValueError, "dilation must be >= 1, got 0"),
    (lambda: convkit.max_pool2d(X, 3, padding=2), ValueError,
     r"padding \(2, 2\) must be at most half the kernel_size \(3, 3\)"),
    (lambda: convkit.max_pool2d(X, 9), ValueError,
     r"kernel_size \(9, 9\) .* larger than the padded input: NCHW shape \(2, 3, 7, 6\)"),
    (lambda: convkit.avg_pool2d(X, 8, padding=0), ValueError, r"kernel_size \(8, 8\) .*\(2, 3, 7, 6\)"),
    (lambda: convkit.avg_pool2d(X, 2, divisor_override=0), ValueError,
     "divisor_override must be a positive int, got 0"),
    (lambda: convkit.avg_pool2d(X, 2, padding=-1), ValueError, "padding must be >= 0, got -1"),
    (lambda: convkit.max_pool2d_backward(np.zeros((2, 3, 3, 3)), X, 2, indices=np.zeros((2, 3, 3, 3))), ValueError,
     r"indices must be int64 with grad_output's shape \(2, 3, 3, 3\), got float64 \(2, 3, 3, 3\)"),
    (lambda: convkit.max_pool2d_backward(np.zeros((2, 3, 3, 3)), X, 2, indices=np.zeros((2, 3, 3, 2), np.int64)),
     ValueError, r"indices must be int64 with grad_output's shape \(2, 3, 3, 3\), got int64 \(2, 3, 3, 2\)"),
]


@pytest.mark.parametrize("call, exc, message", POOL_ERRORS)
def test_pool_bad_parameters(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_errors_follow_the_layout():
    """In NHWC the channel count is the last axis, and messages say which shape they mean."""
    x = X.transpose(0, 2, 3, 1)  # (2, 7, 6, 3): C=3
    with pytest.raises(ValueError, match=rf"NCHW shape {SX} has C=3"):
        convkit.conv2d(x, np.ones((4, 2, 3, 3)), layout="NHWC")
    assert convkit.conv2d(x, W, layout="NHWC").shape == (2, 5, 4, 4)


# ------------------------------------------------------------------------ the C++ bindings, called directly
P0 = (0, 0, 0, 0)


def _fwd(x=X, w=W, b=None, s=(1, 1), p=P0, d=(1, 1), g=1):
    return _cpu.conv2d_forward(x, w, b, s, p, d, g)


GY = np.zeros((2, 4, 5, 4))
BINDING_ERRORS = [
    (lambda: _fwd(w=np.ones((4, 2, 3, 3))), ValueError, r"weight shape \(4, 2, 3, 3\) needs C/groups = 3 .* C = 3"),
    (lambda: _fwd(b=np.ones(5)), ValueError, r"bias has shape \(5,\), expected \(4\)"),
    (lambda: _fwd(b=np.ones((4, 1))), ValueError, r"bias has shape \(4, 1\), expected \(4\)"),
    (lambda: _fwd(x=X[0]), ValueError, r"input must be 4-D, got shape \(3, 7, 6\)"),
    (lambda: _fwd(w=W[0]), ValueError, r"weight must be 4-D, got shape \(3, 3, 3\)"),
    (lambda: _fwd(s=(0, 1)), ValueError, "stride must be > 0"),
    (lambda: _fwd(d=(1, -1)), ValueError, "dilation must be > 0"),
    (lambda: _fwd(p=(0, -1, 0, 0)), ValueError, "padding must be >= 0"),
    (lambda: _fwd(g=0), ValueError, "groups must divide C and K"),
    (lambda: _fwd(g=2), ValueError, "groups must divide C and K"),
    (lambda: _fwd(w=np.ones((4, 3, 9, 3))), ValueError, "kernel larger than the padded input"),
    (lambda: _fwd(x=np.ones((2, 0, 7, 6)), w=np.ones((4, 0, 3, 3))), ValueError, "sizes must be positive"),
    (lambda: _fwd(d=(2 ** 63 - 1, 1)), ValueError, r"dilation must be < 2\^31"),
    (lambda: _fwd(p=(0, 2 ** 62, 0, 0)), ValueError, r"padding must be < 2\^31"),
    (lambda: _fwd(s=(1, 2 ** 40)), ValueError, r"stride must be < 2\^31"),
    (lambda: _fwd(g=2 ** 62), ValueError, r"groups must be < 2\^31"),
    (lambda: _fwd(x=np.ones((2, 3, 7, 6), np.float16), w=np.ones((4, 3, 3, 3), np.float16)), TypeError, "incompatible"),
    (lambda: _fwd(x=X.astype(np.int64), w=W.astype(np.int64)), TypeError, "incompatible"),
    (lambda: _fwd(x=X.astype(np.float32)), TypeError, "incompatible"),
    (lambda: _fwd(b=np.ones(4, np.float32)), TypeError, "incompatible"),
    (lambda: _fwd(x=X[..., ::2]), TypeError, "incompatible"),
    (lambda: _fwd(x=np.asfortranarray(X)), TypeError, "incompatible"),
    (lambda: _fwd(x=X.tolist()), TypeError, "incompatible"),
    (lambda: _cpu.conv2d_grad_input(GY, W, (7, 6), (2, 2), P0, (1, 1), 1), ValueError,
     r"grad_output has shape \(2, 4, 5, 4\), expected \(2, 4, 3, 2\)"),
    (lambda: _cpu.conv2d_grad_input(GY, W, (-7, 6), (1, 1), P0, (1, 1), 1), ValueError, "sizes must be positive"),
    (lambda: _cpu.conv2d_grad_input(GY, W, (2 ** 40, 6), (1, 1), P0, (1, 1), 1), ValueError, r"< 2\^31"),
    (lambda: _cpu.conv2d_grad_input(GY, W, (7, 6), (1, 1), P0, (1, 1), -1), ValueError, "sizes must be positive"),
    (lambda: _cpu.conv2d_grad_input(GY, W[..., ::2], (7, 6), (1, 1), P0, (1, 1), 1), TypeError, "incompatible"),
    (lambda: _cpu.conv2d_grad_weight(GY, X, (3, 3), (2, 2), P0, (1, 1), 1), ValueError,
     r"grad_output has shape \(2, 4, 5, 4\), expected \(2, 4, 3, 2\)"),
    (lambda: _cpu.conv2d_grad_weight(GY, X, (10 ** 6, 10 ** 6), (1, 1), P0, (1, 1), 1), ValueError,
     "kernel larger than the padded input"),
    (lambda: _cpu.conv2d_grad_weight(GY, X, (-3, 3), (1, 1), P0, (1, 1), 1), ValueError, "sizes must be positive"),
    (lambda: _cpu.conv2d_grad_weight(GY, X, (3, 3), (1, 1), P0, (1, 1), 0), ValueError, "groups must be > 0"),
    (lambda: _cpu.conv2d_grad_weight(GY, X, (3, 3), (1, 1), P0, (1, 1), 2), ValueError, "groups must divide C = 3"),
    (lambda: _cpu.conv2d_grad_weight(GY.astype(np.float32), X, (3, 3), (1, 1), P0, (1, 1), 1), TypeError,
     "incompatible"),
]


@pytest.mark.parametrize("call, exc, message", BINDING_ERRORS)
def test_binding_refuses_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def _python_accepts(x_shape, w_shape, stride, pads, dilation, groups):
    try:
        _args.conv_geometry(x_shape, w_shape, stride, pads, dilation, groups)
        return True
    except (TypeError, ValueError):
        return False


def test_binding_fuzz_agrees_with_the_python_checks_and_the_reference():
    """Random (often inconsistent) shapes and parameters straight into the bindings: each
    call either raises ValueError exactly when the Python layer would, or computes the
    reference's result; nothing else (no crash, no other exception)."""
    rng = np.random.default_rng(7)

    def pick(lo, hi, bad):  # mostly in [lo, hi], one time in twenty the bad value
        return int(bad if rng.random() < 1 / 20 else rng.integers(lo, hi + 1))

    computed = 0
    for _ in range(300):
        groups, Cg, Kg = pick(1, 3, 0), pick(1, 3, 0), pick(1, 3, 0)
        C, K = max(groups, 1) * Cg + pick(0, 0, 1), max(groups, 1) * Kg + pick(0, 0, 1)
        kh, kw, H, W_ = pick(1, 4, 0), pick(1, 4, 0), pick(1, 7, 0), pick(1, 7, 0)
        stride, dil = (pick(1, 3, 0), pick(1, 3, -1)), (pick(1, 3, 0), pick(1, 3, -2))
        pads = tuple(pick(0, 3, -1) for _ in range(4))
        x = rng.standard_normal((pick(1, 2, 0), C, H, W_))
        w = rng.standard_normal((K, Cg, kh, kw))
        ok = _python_accepts(x.shape, w.shape, stride, pads, dil, groups)
        try:
            y = _cpu.conv2d_forward(x, w, None, stride, pads, dil, groups)
        except ValueError:
            assert not ok, f"binding refused a valid call: {x.shape} {w.shape} {stride} {pads} {dil} {groups}"
            continue
        assert ok, f"binding accepted an invalid call: {x.shape} {w.shape} {stride} {pads} {dil} {groups}"
        np.testing.assert_allclose(y, ref.conv2d(x, w, None, stride, pads, dil, groups), rtol=1e-10, atol=1e-10)
        gy = rng.standard_normal(y.shape)
        gx = _cpu.conv2d_grad_input(gy, w, x.shape[2:], stride, pads, dil, groups)
        gw = _cpu.conv2d_grad_weight(gy, x, w.shape[2:], stride, pads, dil, groups)
        rx, rw, _ = ref.conv2d_backward(gy, x, w, stride, pads, dil, groups)
        np.testing.assert_allclose(gx, rx, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-10)
        # the same gradient calls with a wrong size must be refused, not read past the arrays
        with pytest.raises(ValueError):
            _cpu.conv2d_grad_input(gy, w, (x.shape[2] + stride[0], x.shape[3]), stride, pads, dil, groups)
        with pytest.raises(ValueError):
            _cpu.conv2d_grad_weight(gy, x, (w.shape[2], w.shape[3] + dil[1] * stride[1]), stride, pads, dil, groups)
        computed += 1
    assert computed >= 50, f"only {computed} valid calls: the fuzz should also compute"
