"""The depthwise engine (src/conv_depthwise*.cpp, kernels/cpu/f32_dwconv*) against convkit.reference.

Every instruction set the CPU has runs the same grid, in NCHW (vectors over pixels) and
NHWC (vectors over channels). The cases aim at the kernels' edges: flat pixel counts
below, at and above the vector widths (8, 16) and register tiles (64 pixels); channel
counts (C * multiplier) below, at and above them; 1x1 images; kernels larger than the
image; padding wider than the kernel; stride phases with no taps (grad-input must write
zeros there); strided rows at and around the vector width; images split into blocks of
rows (few planes, or planes too large for L2); channel multipliers 1..3.
"""
import numpy as np
import pytest

import convkit
from convkit import _cpu
from convkit import reference as ref

ISAS = ("scalar", "avx2", "avx512")
AVAILABLE = ISAS[:ISAS.index(_cpu.detected_isa()) + 1]

# name: (N, C, H, W, multiplier, kernel, stride, padding, dilation)
CASES = {
    "1x1 image, 1x1 kernel": (1, 2, 1, 1, 1, (1, 1), 1, 0, 1),
    "1x1 image, taps in the padding": (2, 3, 1, 1, 2, (3, 3), 1, 1, 1),
    "kernel larger than the image": (1, 2, 2, 2, 1, (5, 5), 1, 2, 1),
    "kernel larger, strided, multiplier 3": (2, 2, 3, 2, 3, (7, 7), (2, 1), 3, 1),
    "padding wider than the kernel": (1, 3, 5, 6, 1, (3, 3), 1, 3, 1),
    "padding wider, strided": (1, 2, 9, 7, 1, (3, 3), 2, 4, 1),
    "8x8": (1, 3, 8, 8, 1, (3, 3), 1, 1, 1),
    "7x9 strided, multiplier 2": (2, 4, 7, 9, 2, (3, 3), 2, 1, 1),
    "same": (1, 2, 16, 15, 1, (3, 3), 1, "same", 1),
    "same strided (asymmetric padding)": (1, 2, 17, 17, 1, (3, 3), 2, "same", 1),
    "same, stride 3, dilation (2, 1)": (1, 3, 9, 33, 1, (2, 4), 3, "same", (2, 1)),
    "1x7": (3, 2, 12, 13, 1, (1, 7), 1, (0, 3), 1),
    "7x1, multiplier 2": (1, 2, 13, 10, 2, (7, 1), 1, (3, 0), 1),
    "4x4, four-sided padding, multiplier 3": (2, 5, 6, 5, 3, (4, 4), (1, 2), (2, 1, 0, 3), 1),
    "even kernel, strided": (1, 2, 11, 11, 1, (6, 6), 2, (2, 3), 1),
    "dilation 2": (1, 2, 20, 31, 1, (3, 3), 1, 2, 2),
    "stride 3, dilation 3": (2, 3, 19, 21, 1, (3, 3), 3, 3, 3),
    "stride 2, dilation 2 (one phase holds every tap)": (1, 2, 14, 14, 1, (3, 3), 2, 2, 2),
    "stride 3 > kernel (phases with no taps)": (1, 2, 10, 11, 1, (2, 2), 3, 0, 1),
    "strided rows of 34-35 pixels": (1, 2, 6, 67, 1, (3, 3), 2, 1, 1),
    "strided rows of exactly 16 pixels": (1, 2, 4, 32, 1, (3, 3), 2, 0, 1),  # SIMD row ends, for sanitizer runs
    "one row of 129 pixels": (2, 2, 1, 129, 1, (1, 3), 1, (0, 1), 1),
    "one row of 64 pixels": (1, 2, 1, 64, 1, (1, 1), 1, 0, 1),
    "one row of 63 pixels": (1, 2, 1, 63, 2, (1, 1), 1, 0, 1),
    "one row under one vector": (1, 2, 1, 15, 2, (1, 3), 1, (0, 1), 1),
    "one column": (1, 2, 40, 1, 1, (3, 1), 1, (1, 0), 1),
    "few planes: blocks of rows": (1, 2, 40, 37, 1, (3, 3), 1, 1, 1),
    "few planes, strided, multiplier 2": (1, 2, 41, 30, 2, (5, 5), 2, 2, 1),
    "planes larger than the L2 budget": (1, 3, 200, 190, 1, (3, 3), 1, 1, 1),
    "16 channels": (2, 16, 9, 10, 1, (3, 3), 1, 1, 1),
    "17 channels, strided": (1, 17, 11, 9, 1, (3, 3), 2, 1, 1),
    "8 channels x multiplier 2": (1, 8, 7, 12, 2, (5, 5), 1, 2, 1),
    "33 channels, stride 3, dilation 2": (1, 33, 13, 14, 1, (3, 3), 3, 2, 2),
    "40 channels, NHWC rows over the L2 budget": (1, 40, 30, 200, 1, (3, 3), 1, 1, 1),
    # 3x3 stride 2 (in place, gx rows as interleaved pairs of vectors): gx columns from
    # 2q - pl, pl odd or even, rows past one vector pair or ending inside one.
    "3x3 stride 2, 1x1 image": (2, 3, 1, 1, 1, (3, 3), 2, 1, 1),
    "3x3 stride 2, 5x33, multiplier 3": (1, 2, 5, 33, 3, (3, 3), 2, 1, 1),
    "3x3 stride 2, padding (2, 3)": (1, 2, 9, 18, 1, (3, 3), 2, (2, 3), 1),
    "3x3 stride 2, rows of 65, padding (0, 1)": (1, 2, 3, 65, 1, (3, 3), 2, (0, 1), 1),
    "3x3 stride 2, four-sided padding": (2, 3, 8, 9, 1, (3, 3), 2, (1, 0, 2, 1), 1),
    # 3x3 stride 1 forward (and multiplier-1 grad-input, padding 2 - p) in place, blocks of
    # 8 output rows then single rows.
    "3x3 stride 1, 1x1 image": (2, 3, 1, 1, 1, (3, 3), 1, 1, 1),
    "3x3 stride 1, 11x17, padding (0, 2)": (1, 2, 11, 17, 1, (3, 3), 1, (0, 2), 1),
    "3x3 stride 1, four-sided padding": (1, 2, 7, 20, 1, (3, 3), 1, (2, 0, 1, 2), 1),
    "3x3 stride 1, 19x33, multiplier 2": (2, 3, 19, 33, 2, (3, 3), 1, 1, 1),
    "3x3 stride 1, 26x70, padding (2, 1)": (1, 2, 26, 70, 1, (3, 3), 1, (2, 1), 1),
}


def _cases(*names):
    return pytest.mark.parametrize("case", [CASES[n] for n in names], ids=names)


@pytest.fixture(params=("NCHW", "NHWC"))
def layout(request):
    return request.param


@pytest.fixture(params=AVAILABLE)
def isa(request):
    before = convkit.get_isa()
    convkit.set_isa(request.param)
    yield request.param
    convkit.set_isa(before)


def _arrays(case, dtype, seed=0):
    N, C, H, W, m, (kh, kw), s, p, d = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C * m, 1, kh, kw)).astype(dtype)
    b = rng.standard_normal(C * m).astype(dtype)
    oh, ow = ref.conv2d(x[:1, :1], w[:1], None, s, p, d).shape[2:]
    gy = rng.standard_normal((N, C * m, oh, ow)).astype(dtype)
    return x, w, b, gy


def _close(got, want, dtype):
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


def _to(a, layout):
    """An NCHW array as convkit takes it in `layout`."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


def _from(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def _check_conv(case, dtype, layout):
    N, C, H, W, m, k, s, p, d = case
    x, w, b, gy = _arrays(case, dtype)
    xl, gyl = _to(x, layout), _to(gy, layout)
    y = convkit.conv2d(xl, w, None, s, p, d, groups=C, layout=layout, algo="direct")
    _close(_from(y, layout), ref.conv2d(x, w, None, s, p, d, groups=C), dtype)
    y = convkit.conv2d(xl, w, b, s, p, d, groups=C, activation="relu", layout=layout, algo="direct")
    _close(_from(y, layout), np.maximum(ref.conv2d(x, w, b, s, p, d, groups=C), 0), dtype)
    gx, gw, _ = convkit.conv2d_backward(gyl, xl, w, s, p, d, groups=C, need_bias=False, layout=layout, algo="direct")
    rgx, rgw, _ = ref.conv2d_backward(gy, x, w, s, p, d, groups=C)
    _close(_from(gx, layout), rgx, dtype)
    _close(gw, rgw, dtype)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_float32_every_isa(case, isa, layout):
    _check_conv(case, np.float32, layout)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_float64(case, layout):
    _check_conv(case, np.float64, layout)


@_cases("kernel larger, strided, multiplier 3", "4x4, four-sided padding, multiplier 3", "strided rows of 34-35 pixels",
        "3x3 stride 2, 5x33, multiplier 3", "3x3 stride 1, 19x33, multiplier 2",
        "few planes, strided, multiplier 2", "planes larger than the L2 budget",
        "40 channels, NHWC rows over the L2 budget")
def test_one_and_two_threads_bit_identical(case, isa, layout):
    N, C, H, W, m, k, s, p, d = case
    x, w, b, gy = _arrays(case, np.float32, seed=1)
    x, gy = _to(x, layout), _to(gy, layout)
    kw = dict(groups=C, layout=layout, algo="direct")
    before = convkit.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            convkit.set_num_threads(threads)
            y = convkit.conv2d(x, w, b, s, p, d, activation="relu", **kw)
            runs.append((y, *convkit.conv2d_backward(gy, x, w, s, p, d, need_bias=False, **kw)[:2]))
    finally:
        convkit.set_num_threads(before)
    for one, two in zip(*runs):
        assert np.array_equal(one, two)


@pytest.mark.parametrize("stride", (1, 2))
def test_outputs_over_8_mb_streamed_at_two_threads(stride, isa):
    """The in-place 3x3 kernels' outputs over 8 MB go out through scratch and streaming
    stores when more than one thread runs (src/conv_depthwise_units.h): the forward's y
    (stride 1) and grad-input's gx, 2 x 160 planes of 95 x 95 (12 MB), whose rows start at
    every offset from a vector boundary. Against the reference, and bit for bit against
    one thread's plain stores."""
    case = (2, 160, 95, 95, 1, (3, 3), stride, 1, 1)
    x, w, b, gy = _arrays(case, np.float32, seed=2)
    before = convkit.get_num_threads()
    runs = []
    try:
        for threads in (2, 1):
            convkit.set_num_threads(threads)
            y = convkit.conv2d(x, w, b, stride, 1, groups=160, algo="direct")
            gx = convkit.conv2d_backward(gy, x, w, stride, 1, groups=160, need_weight=False, need_bias=False,
                                         algo="direct")[0]
            runs.append((y, gx))
    finally:
        convkit.set_num_threads(before)
    _close(runs[0][0], ref.conv2d(x, w, b, stride, 1, groups=160), np.float32)
    _close(runs[0][1], ref.conv2d_grad_input(gy, w, x.shape[2:], stride, 1, 1, 160), np.float32)
    for two, one in zip(*runs):
        assert np.array_equal(two, one)


def test_relu_propagates_nan(isa, layout):
    x = np.zeros((1, 2, 5, 37), np.float32)
    x[0, 1, 2, 20] = np.nan
    w = -np.ones((2, 1, 3, 3), np.float32)
    y = _from(convkit.conv2d(_to(x, layout), w, None, 1, 1, groups=2, activation="relu", layout=layout, algo="direct"),
              layout)
    nan = np.isnan(y)
    assert nan[0, 1, 1:4, 19:22].all() and nan.sum() == 9
    assert (y[~nan] == 0).all()


@_cases("7x9 strided, multiplier 2", "same, stride 3, dilation (2, 1)", "4x4, four-sided padding, multiplier 3")
def test_public_depthwise_and_separable(case, isa, layout):
    N, C, H, W, m, k, s, p, d = case
    x, w, b, gy = _arrays(case, np.float32, seed=2)
    kw = dict(layout=layout, algo="direct")
    y = convkit.depthwise_conv2d(_to(x, layout), w, b, s, p, d, **kw)
    _close(_from(y, layout), ref.depthwise_conv2d(x, w, b, s, p, d), np.float32)
    gx, gw, gb = convkit.depthwise_conv2d_backward(_to(gy, layout), _to(x, layout), w, s, p, d, **kw)
    for g, r in zip((_from(gx, layout), gw, gb), ref.depthwise_conv2d_backward(gy, x, w, s, p, d)):
        _close(g, r, np.float32)

    pw = np.random.default_rng(3).standard_normal((5, C * m, 1, 1)).astype(np.float32)
    pb = np.arange(5, dtype=np.float32)
    y = convkit.separable_conv2d(_to(x, layout), w, pw, pb, s, p, d, **kw)
    want = ref.separable_conv2d(x, w, pw, pb, s, p, d)
    _close(_from(y, layout), want, np.float32)
    g_sep = np.random.default_rng(4).standard_normal(want.shape).astype(np.float32)
    gx, *grads = convkit.separable_conv2d_backward(_to(g_sep, layout), _to(x, layout), w, pw, s, p, d, **kw)
    for g, r in zip((_from(gx, layout), *grads), ref.separable_conv2d_backward(g_sep, x, w, pw, s, p, d)):
        _close(g, r, np.float32)
