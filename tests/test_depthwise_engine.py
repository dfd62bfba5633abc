"""The depthwise engine (src/conv_depthwise.cpp, kernels/cpu/f32_dwconv*) against convkit.reference.

Every instruction set the CPU has runs the same grid. The cases aim at the kernels' edges:
flat pixel counts below, at and above the vector widths (8, 16) and register tiles (32,
128 pixels); 1x1 images; kernels larger than the image; padding wider than the kernel;
stride phases with no taps (grad-input must write zeros there); planes split into blocks
of rows (few channels, or planes too large for L2); channel multipliers 1..3.
"""
import numpy as np
import pytest

import convkit
from convkit import _cpu
from convkit import reference as ref

ISAS = ("scalar", "avx2", "avx512")
AVAILABLE = ISAS[:ISAS.index(_cpu.detected_isa()) + 1]

# (N, C, H, W, multiplier, kernel, stride, padding, dilation)
CASES = [
    (1, 2, 1, 1, 1, (1, 1), 1, 0, 1),              # 1x1 image, 1x1 kernel
    (2, 3, 1, 1, 2, (3, 3), 1, 1, 1),              # 1x1 image, taps in the padding
    (1, 2, 2, 2, 1, (5, 5), 1, 2, 1),              # kernel larger than the image
    (2, 2, 3, 2, 3, (7, 7), (2, 1), 3, 1),         # ... strided, multiplier 3
    (1, 3, 5, 6, 1, (3, 3), 1, 3, 1),              # padding wider than the kernel
    (1, 2, 9, 7, 1, (3, 3), 2, 4, 1),              # ... strided
    (1, 3, 8, 8, 1, (3, 3), 1, 1, 1),
    (2, 4, 7, 9, 2, (3, 3), 2, 1, 1),
    (1, 2, 16, 15, 1, (3, 3), 1, "same", 1),
    (1, 2, 17, 17, 1, (3, 3), 2, "same", 1),       # asymmetric padding
    (1, 3, 9, 33, 1, (2, 4), 3, "same", (2, 1)),
    (3, 2, 12, 13, 1, (1, 7), 1, (0, 3), 1),
    (1, 2, 13, 10, 2, (7, 1), 1, (3, 0), 1),
    (2, 5, 6, 5, 3, (4, 4), (1, 2), (2, 1, 0, 3), 1),
    (1, 2, 11, 11, 1, (6, 6), 2, (2, 3), 1),       # even kernel
    (1, 2, 20, 31, 1, (3, 3), 1, 2, 2),            # dilation 2
    (2, 3, 19, 21, 1, (3, 3), 3, 3, 3),            # stride 3, dilation 3
    (1, 2, 14, 14, 1, (3, 3), 2, 2, 2),            # stride 2, dilation 2: one phase holds every tap
    (1, 2, 10, 11, 1, (2, 2), 3, 0, 1),            # stride 3 > kernel: phases with no taps
    (1, 2, 6, 67, 1, (3, 3), 2, 1, 1),             # stride-2 rows of 34-35 pixels: SIMD deinterleave + tail
    (2, 2, 1, 129, 1, (1, 3), 1, (0, 1), 1),       # one long row: 129 pixels
    (1, 2, 1, 15, 2, (1, 3), 1, (0, 1), 1),        # one row, under one AVX-512 vector
    (1, 2, 40, 1, 1, (3, 1), 1, (1, 0), 1),        # one column
    (1, 2, 40, 37, 1, (3, 3), 1, 1, 1),            # few planes: blocks of rows
    (1, 2, 41, 30, 2, (5, 5), 2, 2, 1),            # ... strided
    (1, 3, 200, 190, 1, (3, 3), 1, 1, 1),          # planes larger than the L2 budget
]


def _ids(case):
    N, C, H, W, m, k, s, p, d = case
    return f"{N}x{C}x{H}x{W}-m{m}-k{k[0]}x{k[1]}-s{s}-p{p}-d{d}".replace(" ", "")


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


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_float32_every_isa(case, isa):
    _check_conv(case, np.float32)


@pytest.mark.parametrize("case", CASES[:-1], ids=_ids)
def test_float64(case):
    _check_conv(case, np.float64)


@pytest.mark.parametrize("case", [CASES[3], CASES[13], CASES[19], CASES[24], CASES[25]], ids=_ids)
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


@pytest.mark.parametrize("case", [CASES[7], CASES[10], CASES[13]], ids=_ids)
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
