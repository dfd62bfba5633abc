"""The depthwise engine (src/conv_depthwise.cpp, kernels/cpu/f32_dwconv*) against convkit.reference.

Every instruction set the CPU has runs the same grid. The cases aim at the kernels' edges:
flat pixel counts below, at and above the vector widths (8, 16) and register tiles (64
pixels for both SIMD kernels); 1x1 images; kernels larger than the image; padding wider
than the kernel; stride phases with no taps (grad-input must write zeros there); strided
rows long enough for the SIMD deinterleave and its tail; planes split into blocks of rows
(few channels, or planes too large for L2); channel multipliers 1..3.
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
}


def _cases(*names):
    return pytest.mark.parametrize("case", [CASES[n] for n in names], ids=names)


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


def _check_conv(case, dtype):
    N, C, H, W, m, k, s, p, d = case
    x, w, b, gy = _arrays(case, dtype)
    y = convkit.conv2d(x, w, None, s, p, d, groups=C, algo="direct")
    _close(y, ref.conv2d(x, w, None, s, p, d, groups=C), dtype)
    y = convkit.conv2d(x, w, b, s, p, d, groups=C, activation="relu", algo="direct")
    _close(y, np.maximum(ref.conv2d(x, w, b, s, p, d, groups=C), 0), dtype)
    gx, gw, _ = convkit.conv2d_backward(gy, x, w, s, p, d, groups=C, need_bias=False, algo="direct")
    rgx, rgw, _ = ref.conv2d_backward(gy, x, w, s, p, d, groups=C)
    _close(gx, rgx, dtype)
    _close(gw, rgw, dtype)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_float32_every_isa(case, isa):
    _check_conv(case, np.float32)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_float64(case):
    _check_conv(case, np.float64)


@_cases("kernel larger, strided, multiplier 3", "4x4, four-sided padding, multiplier 3", "strided rows of 34-35 pixels",
        "few planes, strided, multiplier 2", "planes larger than the L2 budget")
def test_one_and_two_threads_bit_identical(case, isa):
    N, C, H, W, m, k, s, p, d = case
    x, w, b, gy = _arrays(case, np.float32, seed=1)
    before = convkit.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            convkit.set_num_threads(threads)
            y = convkit.conv2d(x, w, b, s, p, d, groups=C, activation="relu", algo="direct")
            runs.append((y, *convkit.conv2d_backward(gy, x, w, s, p, d, groups=C, need_bias=False, algo="direct")[:2]))
    finally:
        convkit.set_num_threads(before)
    for one, two in zip(*runs):
        assert np.array_equal(one, two)


def test_relu_propagates_nan(isa):
    x = np.zeros((1, 2, 5, 37), np.float32)
    x[0, 1, 2, 20] = np.nan
    w = -np.ones((2, 1, 3, 3), np.float32)
    y = convkit.conv2d(x, w, None, 1, 1, groups=2, activation="relu", algo="direct")
    nan = np.isnan(y)
    assert nan[0, 1, 1:4, 19:22].all() and nan.sum() == 9
    assert (y[~nan] == 0).all()


@_cases("7x9 strided, multiplier 2", "same, stride 3, dilation (2, 1)", "4x4, four-sided padding, multiplier 3")
def test_public_depthwise_and_separable(case, isa):
    N, C, H, W, m, k, s, p, d = case
    x, w, b, gy = _arrays(case, np.float32, seed=2)
    _close(convkit.depthwise_conv2d(x, w, b, s, p, d, algo="direct"), ref.depthwise_conv2d(x, w, b, s, p, d),
           np.float32)
    got = convkit.depthwise_conv2d_backward(gy, x, w, s, p, d, algo="direct")
    for g, r in zip(got, ref.depthwise_conv2d_backward(gy, x, w, s, p, d)):
        _close(g, r, np.float32)

    pw = np.random.default_rng(3).standard_normal((5, C * m, 1, 1)).astype(np.float32)
    pb = np.arange(5, dtype=np.float32)
    y = convkit.separable_conv2d(x, w, pw, pb, s, p, d, algo="direct")
    _close(y, ref.separable_conv2d(x, w, pw, pb, s, p, d), np.float32)
    g_sep = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    got = convkit.separable_conv2d_backward(g_sep, x, w, pw, s, p, d, algo="direct")
    for g, r in zip(got, ref.separable_conv2d_backward(g_sep, x, w, pw, s, p, d)):
        _close(g, r, np.float32)
