"""Pooling (max, average, global, maxout; forward and backward) against convkit.reference.

Every registered CPU implementation of each pooling primitive runs, through the public
API, over a grid of geometries (kernel 1..5 with non-square ones, stride 1..3, padding
0..k/2, dilation 1..2, ceil_mode, count_include_pad, divisor_override, images narrower
and wider than the vector widths, kernels larger than the image), in both layouts and
both dtypes, and every compiled one under each instruction set the CPU has. Inputs hold
small integers, so windows are full of ties (the first maximum must win), and some NaNs.
"""
import contextlib
import functools
import itertools

import numpy as np
import pytest

import convkit
from convkit import _cpu
from convkit import reference as ref

ISAS = ("scalar", "avx2", "avx512")
CPU_ISAS = ISAS[: ISAS.index(_cpu.detected_isa()) + 1]


def algos(primitive):
    return sorted({i.algo for i in convkit.implementations("cpu") if i.primitive == primitive})


def algo_isa(primitive):
    """(algo, isa) pairs: compiled algorithms under every ISA, the NumPy reference once."""
    return [(a, isa) for a in algos(primitive) for isa in (CPU_ISAS if a != "reference" else CPU_ISAS[-1:])]


@contextlib.contextmanager
def isa_cap(isa):
    before = convkit.get_isa()
    convkit.set_isa(isa)
    try:
        yield
    finally:
        convkit.set_isa(before)


def to_layout(a, layout):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


def from_layout(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def close(got, want, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    if dtype == np.float32:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.nanmax(np.abs(want), initial=0)),
                                   err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=what)


# ----------------------------------------------------------------------------- the grid
def pool_cases(n, seed, dilation, sizes=(1, 2, 3, 7, 8, 9, 16, 17, 23, 40)):
    """Valid (H, W, kernel, stride, padding, dilation, ceil_mode) tuples, drawn at random
    but covering every kernel, stride and padding value."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        k = tuple(int(v) for v in rng.integers(1, 6, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        d = tuple(int(v) for v in rng.integers(1, 3, 2)) if dilation else (1, 1)
        hw = tuple(int(v) for v in rng.choice(sizes, 2))
        ceil = bool(rng.integers(0, 2))
        try:
            ref.pool2d_output_size(*hw, k, s, p, d, ceil)
        except ValueError:
            continue
        cases.append((hw, k, s, p, d, ceil))
    # the suite's layers, at a small batch, and wide rows that tile into several vectors
    cases += [((37, 70), (3, 3), (2, 2), (1, 1), (1, 1), False), ((36, 72), (2, 2), (2, 2), (0, 0), (1, 1), False),
              ((5, 67), (3, 3), (1, 1), (1, 1), (1, 1), True), ((9, 100), (2, 3), (3, 3), (1, 1), (2, 1), True)]
    return cases


MAX_CASES = pool_cases(110, 1, dilation=True)
AVG_CASES = [c + (cip, div) for c, cip, div in zip(pool_cases(110, 2, dilation=False), itertools.cycle((True, False)),
                                                   itertools.cycle((None, None, 3, None, 1)))]


def sample(shape, seed, nan=False):
    """Small integers (many ties) as float64, with a few NaNs if asked."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype(np.float64)
    if nan:
        x[rng.random(shape) < 0.03] = np.nan
    return x


@functools.lru_cache(maxsize=None)
def max_expected(i):
    hw, k, s, p, d, ceil = MAX_CASES[i]
    x = sample((2, 3) + hw, i, nan=i % 4 == 0)
    y, idx = ref.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    gy = np.random.default_rng(i).standard_normal(y.shape)
    return x, y, idx, gy, ref.max_pool2d_backward(gy, x, k, s, p, d, ceil, indices=idx)


@functools.lru_cache(maxsize=None)
def avg_expected(i):
    hw, k, s, p, _, ceil, cip, div = AVG_CASES[i]
    x = np.random.default_rng(i).standard_normal((2, 3) + hw)
    y = ref.avg_pool2d(x, k, s, p, ceil, cip, div)
    gy = np.random.default_rng(i + 1).standard_normal(y.shape)
    return x, y, gy, ref.avg_pool2d_backward(gy, x.shape, k, s, p, ceil, cip, div)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo,isa", algo_isa("max_pool2d"))
def test_max_pool2d_grid(algo, isa, layout, dtype):
    with isa_cap(isa):
        for i, (hw, k, s, p, d, ceil) in enumerate(MAX_CASES):
            x, y_ref, idx_ref, gy, gx_ref = max_expected(i)
            what = f"case {i}: input {x.shape}, kernel {k}, stride {s}, padding {p}, dilation {d}, ceil {ceil}"
            xl = to_layout(x.astype(dtype), layout)
            kw = dict(layout=layout, algo=algo)
            y, idx = convkit.max_pool2d(xl, k, s, p, d, ceil, return_indices=True, **kw)
            assert y.dtype == dtype and idx.dtype == np.int64, what
            np.testing.assert_array_equal(from_layout(y, layout), y_ref, err_msg=what)  # max is exact
            np.testing.assert_array_equal(from_layout(idx, layout), idx_ref, err_msg=what)
            np.testing.assert_array_equal(convkit.max_pool2d(xl, k, s, p, d, ceil, **kw), y, err_msg=what)
            gyl = to_layout(gy.astype(dtype), layout)
            gx = convkit.max_pool2d_backward(gyl, xl, k, s, p, d, ceil, indices=idx, **kw)
            close(from_layout(gx, layout), gx_ref, dtype, what)
            gx_again = convkit.max_pool2d_backward(gyl, xl, k, s, p, d, ceil, **kw)  # indices recomputed
            np.testing.assert_array_equal(gx_again, gx, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo,isa", algo_isa("avg_pool2d"))
def test_avg_pool2d_grid(algo, isa, layout, dtype):
    with isa_cap(isa):
        for i, (hw, k, s, p, _, ceil, cip, div) in enumerate(AVG_CASES):
            x, y_ref, gy, gx_ref = avg_expected(i)
            what = (f"case {i}: input {x.shape}, kernel {k}, stride {s}, padding {p}, ceil {ceil}, "
                    f"count_include_pad {cip}, divisor_override {div}")
            kw = dict(layout=layout, algo=algo)
            y = convkit.avg_pool2d(to_layout(x.astype(dtype), layout), k, s, p, ceil, cip, div, **kw)
            assert y.dtype == dtype, what
            close(from_layout(y, layout), y_ref, dtype, what)
            gx = convkit.avg_pool2d_backward(to_layout(gy.astype(dtype), layout), to_layout(x.astype(dtype), layout),
                                             k, s, p, ceil, cip, div, **kw)
            close(from_layout(gx, layout), gx_ref, dtype, what)


# ------------------------------------------------------------------- global pooling
# (global average NCHW reduces `width` planes at once: plane counts below, at and above 8
# and 16, planes narrower than, equal to and not a multiple of a vector)
GLOBAL_SHAPES = [(2, 5, 7, 7), (1, 3, 1, 1), (2, 3, 5, 40), (1, 2, 1, 17), (1, 300, 3, 2), (2, 17, 7, 7),
                 (1, 33, 4, 4), (1, 8, 2, 4)]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo,isa", algo_isa("max_pool2d"))
def test_global_pooling(algo, isa, layout):
    kw = dict(layout=layout, algo=algo)
    with isa_cap(isa):
        for n, shape in enumerate(GLOBAL_SHAPES):
            x = sample(shape, n, nan=n == 2)
            x[0, 0] = 2.0  # a plane of ties: the first element wins
            for dtype in (np.float32, np.float64):
                xl = to_layout(x.astype(dtype), layout)
                y, idx = convkit.global_max_pool2d(xl, return_indices=True, **kw)
                y_ref, idx_ref = ref.global_max_pool2d(x, return_indices=True)
                np.testing.assert_array_equal(from_layout(y, layout), y_ref, err_msg=str(shape))
                np.testing.assert_array_equal(from_layout(idx, layout), idx_ref, err_msg=str(shape))
                gy = np.random.default_rng(n).standard_normal(y_ref.shape)
                gyl = to_layout(gy.astype(dtype), layout)
                close(from_layout(convkit.global_max_pool2d_backward(gyl, xl, idx, **kw), layout),
                      ref.global_max_pool2d_backward(gy, x, idx_ref), dtype, str(shape))
                xf = np.nan_to_num(x) + np.random.default_rng(n).standard_normal(shape)
                xfl = to_layout(xf.astype(dtype), layout)
                close(from_layout(convkit.global_avg_pool2d(xfl, **kw), layout), ref.global_avg_pool2d(xf), dtype,
                      str(shape))
                close(from_layout(convkit.global_avg_pool2d_backward(gyl, xfl, **kw), layout),
                      ref.global_avg_pool2d_backward(gy, shape), dtype, str(shape))
                # divisor_override through the global fast path
                close(from_layout(convkit.avg_pool2d(xfl, shape[2:], divisor_override=5, **kw), layout),
                      ref.avg_pool2d(xf, shape[2:], divisor_override=5), dtype, str(shape))


# ----------------------------------------------------------------------------- maxout
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo,isa", algo_isa("maxout2d"))
def test_maxout2d(algo, isa, layout):
    kw = dict(layout=layout, algo=algo)
    with isa_cap(isa):
        for n, (shape, k) in enumerate([((2, 6, 5, 7), 1), ((2, 6, 5, 7), 2), ((2, 6, 5, 7), 3), ((1, 6, 1, 1), 6),
                                        ((1, 4, 3, 40), 2), ((2, 40, 2, 3), 4)]):
            x = sample(shape, n, nan=n % 2 == 1)
            gy = np.random.default_rng(n).standard_normal((shape[0], shape[1] // k) + shape[2:])
            for dtype in (np.float32, np.float64):
                xl = to_layout(x.astype(dtype), layout)
                y = convkit.maxout2d(xl, k, **kw)
                assert y.dtype == dtype
                np.testing.assert_array_equal(from_layout(y, layout), ref.maxout2d(x, k), err_msg=f"{shape} k={k}")
                gx = convkit.maxout2d_backward(to_layout(gy.astype(dtype), layout), xl, k, **kw)
                close(from_layout(gx, layout), ref.maxout2d_backward(gy, x, k), dtype, f"{shape} k={k}")


def test_maxout2d_reference_by_hand():
    x = np.array([3.0, 3.0, 2.0, np.nan, np.nan, 1.0, 0.0, -1.0]).reshape(1, 8, 1, 1)
    np.testing.assert_array_equal(ref.maxout2d(x, 2).ravel(), [3.0, np.nan, np.nan, 0.0])
    np.testing.assert_array_equal(ref.maxout2d(x, 4).ravel(), [np.nan, np.nan])
    g = ref.maxout2d_backward(np.ones((1, 4, 1, 1)), x, 2).ravel()
    np.testing.assert_array_equal(g, [1, 0, 0, 1, 1, 0, 1, 0])  # tie (3, 3): the first; a NaN wins
    g = ref.maxout2d_backward(np.array([1.0, 2.0]).reshape(1, 2, 1, 1), x, 4).ravel()
    np.testing.assert_array_equal(g, [0, 0, 0, 1, 2, 0, 0, 0])  # the first NaN of each group


# ------------------------------------------------------------------ special values
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo,isa", algo_isa("max_pool2d"))
def test_max_pool2d_nan_inf_and_empty_windows(algo, isa, layout):
    kw = dict(layout=layout, algo=algo)
    x = np.full((1, 2, 6, 40), -np.inf)
    x[0, 1, :, ::3] = np.nan  # plane 1: a NaN in every window, preceded by -inf
    x[0, 1, 2, 5] = np.inf
    cases = [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 2), (1, 1), (1, 1), (3, 3)), ((3, 2), (1, 3), (1, 0), (2, 2))]
    with isa_cap(isa):
        for k, s, p, d in cases:
            y_ref, idx_ref = ref.max_pool2d(x, k, s, p, d, return_indices=True)
            y, idx = convkit.max_pool2d(to_layout(x.astype(np.float32), layout), k, s, p, d, return_indices=True, **kw)
            np.testing.assert_array_equal(from_layout(y, layout), y_ref, err_msg=str(k))
            np.testing.assert_array_equal(from_layout(idx, layout), idx_ref, err_msg=str(k))
        # windows over padding only (dilation 3 steps over a 2x2 image): -inf, index -1, no gradient
        x2 = np.arange(4.0).reshape(1, 1, 2, 2)
        y, idx = convkit.max_pool2d(to_layout(x2, layout), 2, 1, 1, 3, return_indices=True, **kw)
        assert from_layout(y, layout).ravel().tolist() == [-np.inf] and from_layout(idx, layout).ravel().tolist() == [-1]
        gx = convkit.max_pool2d_backward(np.ones_like(y), to_layout(x2, layout), 2, 1, 1, 3, indices=idx, **kw)
        assert not gx.any()


# -------------------------------------------------------- DESIGN.md worked examples
DESIGN_2x2 = [
    ([[1, 2, 5, 3], [3, 0, 1, 2], [2, 1, 3, 4], [1, 1, 2, 0]], [[3, 5], [2, 4]]),
    ([[12, 20, 30, 0], [8, 12, 2, 0], [34, 70, 37, 4], [112, 100, 25, 12]], [[20, 30], [112, 37]]),
    ([[6, 3, 1, -3], [4, 1, 2, 0], [3, 1, 3, 2], [7, 1, 1, 1]], [[6, 2], [7, 3]]),
]


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("image,want", DESIGN_2x2)
def test_design_2x2_examples_direct(image, want, isa):
    with isa_cap(isa):
        for dtype in (np.float32, np.float64):
            x = np.array(image, dtype=dtype)[None, None]
            np.testing.assert_array_equal(convkit.max_pool2d(x, 2, 2, algo="direct")[0, 0], want)
            y, idx = convkit.max_pool2d(x, 2, 2, return_indices=True, algo="direct")
            np.testing.assert_array_equal(x.ravel()[idx.ravel()], np.ravel(want))


# ----------------------------------------------------------- layouts, strides, threads
@pytest.mark.parametrize("algo", algos("max_pool2d"))
def test_non_contiguous_input(algo):
    base = np.random.default_rng(5).standard_normal((3, 4, 30, 36))
    x = base[:, ::2, ::-1, 1::2]  # strided, reversed
    for layout, xl, back in [("NCHW", x, lambda a: a), ("NHWC", x.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2))]:
        kw = dict(layout=layout, algo=algo)
        np.testing.assert_array_equal(back(convkit.max_pool2d(xl, 3, 2, 1, **kw)), ref.max_pool2d(x, 3, 2, 1))
        close(back(convkit.avg_pool2d(xl, 3, 2, 1, **kw)), ref.avg_pool2d(x, 3, 2, 1), np.float64, layout)


def test_thread_count_does_not_change_results():
    # large enough to split planes into bands of rows (NCHW) and channels into blocks (NHWC)
    x = np.random.default_rng(6).standard_normal((2, 3, 130, 300)).astype(np.float32)
    xh = np.random.default_rng(7).standard_normal((2, 9, 11, 300)).astype(np.float32)
    calls = [lambda: convkit.max_pool2d(x, 3, 1, 1, return_indices=True),
             lambda: convkit.avg_pool2d_backward(convkit.avg_pool2d(x, 3, 2, 1), x, 3, 2, 1),
             lambda: convkit.max_pool2d(xh, 2, 2, return_indices=True, layout="NHWC"),
             lambda: convkit.avg_pool2d_backward(convkit.avg_pool2d(xh, 3, 1, 1, layout="NHWC"), xh, 3, 1, 1,
                                                 layout="NHWC")]
    before = convkit.get_num_threads()
    try:
        convkit.set_num_threads(1)
        one = [f() for f in calls]
        convkit.set_num_threads(2)
        two = [f() for f in calls]
    finally:
        convkit.set_num_threads(before)
    for a, b in zip(one, two):
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(one[0][0], ref.max_pool2d(x, 3, 1, 1))


@pytest.mark.parametrize("isa", CPU_ISAS[-1:])
def test_large_planes(isa):
    # Planes of 540 KB: a task per plane for the max backward, bands of rows for the rest.
    x = np.random.default_rng(8).integers(-3, 4, (1, 2, 300, 450)).astype(np.float32)
    with isa_cap(isa):
        y, idx = convkit.max_pool2d(x, 3, 2, 1, return_indices=True)
        gy = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
        close(convkit.max_pool2d_backward(gy, x, 3, 2, 1, indices=idx),
              ref.max_pool2d_backward(gy, x, 3, 2, 1), np.float32, "max")
        gy = np.random.default_rng(9).standard_normal((1, 2, 150, 225)).astype(np.float32)
        close(convkit.avg_pool2d_backward(gy, x, 2, 2), ref.avg_pool2d_backward(gy, x.shape, 2, 2), np.float32, "avg")


@pytest.mark.parametrize("shape,layout", [((2, 3, 161, 161), "NCHW"), ((4, 100, 11, 11), "NCHW"),
                                          ((40, 20, 6, 6), "NHWC"), ((3, 300, 20, 20), "NHWC")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_backward_task_paths(shape, layout, dtype):
    # Every way the scatter cuts a call into tasks. NCHW: one plane a task (odd H*W), and
    # many small planes a task. NHWC: many (image, channel block) units a task, and one.
    x = np.random.default_rng(10).integers(-3, 4, shape).astype(dtype)
    y, idx = convkit.max_pool2d(to_layout(x, layout), 3, 2, 1, return_indices=True, layout=layout)
    y, idx = from_layout(y, layout), from_layout(idx, layout)
    gy = np.random.default_rng(11).standard_normal(y.shape).astype(dtype)
    planes, hw = shape[0] * shape[1], shape[2] * shape[3]
    want = np.zeros((planes, hw))
    np.add.at(want, (np.arange(planes)[:, None], idx.reshape(planes, -1)), gy.reshape(planes, -1))
    args = (to_layout(gy, layout), to_layout(x, layout), 3, 2, 1)
    got = convkit.max_pool2d_backward(*args, indices=to_layout(idx, layout), layout=layout)
    close(from_layout(got, layout), want.reshape(shape), dtype, str(shape))
    # any index in [-1, H*W) is taken, in its window or not: here in every other plane
    idx = idx.reshape(planes, -1).copy()
    idx[1::2] = np.random.default_rng(12).integers(-1, hw, idx[1::2].shape)
    want = np.zeros((planes, hw))
    rows, picked = np.broadcast_to(np.arange(planes)[:, None], idx.shape), idx >= 0
    np.add.at(want, (rows[picked], idx[picked]), gy.reshape(planes, -1)[picked])
    idx = idx.reshape(y.shape)
    got = convkit.max_pool2d_backward(*args, indices=to_layout(idx, layout), layout=layout)
    close(from_layout(got, layout), want.reshape(shape), dtype, str(shape) + " any indices")
    idx = idx.copy()
    idx[-1, -1, -1, -1] = hw
    with pytest.raises(ValueError, match="indices"):
        convkit.max_pool2d_backward(*args, indices=to_layout(idx, layout), layout=layout)


def test_zero_batch():
    x = np.zeros((0, 3, 8, 8), np.float32)
    assert convkit.max_pool2d(x, 2).shape == (0, 3, 4, 4)
    assert convkit.avg_pool2d(x, 2, layout="NCHW").shape == (0, 3, 4, 4)
    assert convkit.maxout2d(x, 3).shape == (0, 1, 8, 8)


# ------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("op", ["max", "avg"])
def test_bad_arguments_name_the_argument(op):
    x = np.zeros((1, 2, 6, 6), np.float32)
    pool = convkit.max_pool2d if op == "max" else convkit.avg_pool2d
    with pytest.raises(ValueError, match="padding"):
        pool(x, 3, 1, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        pool(x, 7)
    with pytest.raises(ValueError, match="stride"):
        pool(x, 2, 0)
    with pytest.raises(TypeError, match="stride"):
        pool(x, 2, 1.5)
    with pytest.raises(ValueError, match="grad_output"):
        (convkit.max_pool2d_backward if op == "max" else convkit.avg_pool2d_backward)(np.zeros((1, 2, 2, 2), np.float32), x, 2)


def test_bad_arguments_in_the_binding():
    # The C++ layer re-checks everything: a direct call cannot make a kernel go out of bounds.
    x = np.zeros((1, 2, 6, 6), np.float32)
    with pytest.raises(ValueError, match="padding"):
        _cpu.max_pool2d(x, (3, 3), (1, 1), (2, 2), (1, 1), False, "NCHW")
    with pytest.raises(ValueError, match="kernel_size"):
        _cpu.max_pool2d(x, (7, 7), (1, 1), (0, 0), (1, 1), False, "NCHW")
    with pytest.raises(ValueError, match="stride"):
        _cpu.avg_pool2d(x, (2, 2), (0, 1), (0, 0), False, True, None, "NCHW")
    with pytest.raises(ValueError, match="dilation"):
        _cpu.max_pool2d(x, (2, 2), (1, 1), (0, 0), (0, 1), False, "NCHW")
    with pytest.raises(ValueError, match="divisor_override"):
        _cpu.avg_pool2d(x, (2, 2), (1, 1), (0, 0), False, True, 0, "NCHW")
    with pytest.raises(ValueError, match="layout"):
        _cpu.max_pool2d(x, (2, 2), (1, 1), (0, 0), (1, 1), False, "CHWN")
    with pytest.raises(ValueError, match="4-D"):
        _cpu.max_pool2d(x[0], (2, 2), (1, 1), (0, 0), (1, 1), False, "NCHW")
    gy = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="grad_output"):
        _cpu.avg_pool2d_backward(gy, (4, 4), (2, 2), (2, 2), (0, 0), False, True, None, "NCHW")
    with pytest.raises(ValueError, match="indices"):
        _cpu.max_pool2d_backward(gy, np.zeros((1, 2, 3, 2), np.int64), (6, 6), (2, 2), (2, 2), (0, 0), (1, 1),
                                 False, "NCHW")
    with pytest.raises(TypeError):  # a wrong dtype is refused, not converted
        _cpu.max_pool2d(x.astype(np.float16), (2, 2), (1, 1), (0, 0), (1, 1), False, "NCHW")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_max_backward_rejects_indices_outside_the_plane(layout):
    x = np.zeros((1, 2, 4, 4), np.float32)
    idx = np.zeros((1, 2, 2, 2), np.int64)
    idx[0, 1, 1, 1] = 16
    with pytest.raises(ValueError, match="indices"):
        convkit.max_pool2d_backward(np.ones((1, 2, 2, 2), np.float32), to_layout(x, layout), 2,
                                    indices=to_layout(idx, layout), layout=layout, algo="direct")


def test_maxout2d_bad_arguments():
    x = np.zeros((1, 6, 2, 2), np.float32)
    with pytest.raises(ValueError, match="k must be a positive divisor"):
        convkit.maxout2d(x, 4)
    with pytest.raises(ValueError, match="k must be a positive divisor"):
        convkit.maxout2d(x, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        convkit.maxout2d(x, 2.0)
    with pytest.raises(ValueError, match="grad_output"):
        convkit.maxout2d_backward(np.zeros((1, 2, 2, 2), np.float32), x, 2)
    with pytest.raises(ValueError, match="k must be a positive divisor"):
        _cpu.maxout2d(x, 4, "NCHW")
