"""algo="im2col" (kernels/cython/im2col.pyx) against the float64 reference.

Forward (with the bias + ReLU epilogue) and backward, float32 and float64, NCHW and NHWC,
on a grid that walks the edges of the column copy: every kernel size 1..7 (square and
not), strides 1..3, padding 0 / symmetric / 4-sided / "same" / "valid", dilation 1..3,
groups (incl. depthwise with a channel multiplier), batch 1 and > 1, odd sizes, 1x1
images and kernels larger than the image. Then the buffer cap (a small cap tiles and
gives the same result), the ops composed over the primitives, and bad input.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import convkit
from convkit import _args
from convkit import reference as ref
from helpers import assert_close

_im2col = pytest.importorskip("convkit._im2col", reason="the Cython extension is not built")

DTYPES = (np.float32, np.float64)
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Case:
    N: int
    C: int
    H: int
    W: int
    K: int
    kh: int
    kw: int
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1

    @property
    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def __str__(self):
        return (f"x{self.N}x{self.C}x{self.H}x{self.W}-w{self.K}x{self.kh}x{self.kw}-s{self.stride}"
                f"-p{self.padding}-d{self.dilation}-g{self.groups}").replace(" ", "")


CASES = [
    Case(1, 3, 7, 7, 4, 1, 1),                                   # 1x1, stride 1: the input is the column matrix
    Case(2, 4, 5, 6, 6, 1, 1, groups=2),                         # ... per group
    Case(1, 3, 9, 8, 2, 1, 1, stride=2),                         # 1x1 strided: copied
    Case(2, 3, 8, 9, 5, 2, 2),
    Case(1, 2, 10, 11, 3, 3, 3, padding=1),
    Case(3, 5, 9, 7, 4, 3, 3, stride=2, padding=1),              # batch > 1, odd sizes
    Case(1, 2, 13, 12, 3, 4, 4, stride=3, padding=2),
    Case(1, 3, 11, 13, 2, 5, 5, padding=2, dilation=2),
    Case(1, 2, 12, 12, 3, 6, 6, stride=2, padding=(3, 1)),
    Case(2, 2, 14, 15, 3, 7, 7, stride=(2, 3), padding=3, dilation=(1, 2)),
    Case(1, 4, 9, 17, 5, 1, 7, padding=(0, 3)),                  # inception's factorized 1x7
    Case(1, 4, 17, 9, 5, 7, 1, padding=(3, 0)),
    Case(1, 3, 10, 9, 4, 5, 3, stride=(1, 2), padding=(1, 2, 0, 3), dilation=(3, 1)),  # 4-sided padding
    Case(2, 3, 10, 11, 4, 3, 3, padding="same", dilation=3),
    Case(1, 3, 11, 10, 4, 4, 2, stride=(2, 3), padding="same"),  # TensorFlow's 'same' for any stride
    Case(1, 3, 9, 9, 2, 3, 3, padding="valid", dilation=2),
    Case(1, 6, 9, 8, 4, 3, 3, padding=1, groups=2),
    Case(2, 6, 8, 9, 9, 3, 2, stride=2, padding=1, groups=3),
    Case(2, 5, 9, 10, 5, 3, 3, padding=1, groups=5),             # depthwise
    Case(1, 4, 11, 9, 8, 5, 5, stride=2, padding=2, dilation=2, groups=4),  # depthwise, multiplier 2
    Case(1, 2, 1, 1, 3, 3, 3, padding=1),                        # 1x1 image, kernel larger than it
    Case(2, 3, 2, 3, 2, 5, 5, padding=2),                        # kernel larger than the image
    Case(1, 17, 5, 5, 19, 3, 3, padding=1),                      # channels past a vector width
    # Stride 1 on images as wide as the output: each tap's rows move as one run (transfer_run),
    # padding on one side only (the run's gaps differ per tap)
    Case(2, 3, 6, 5, 4, 3, 3, padding=(2, 0, 2, 0)),
    Case(1, 2, 7, 4, 3, 2, 3, padding=(0, 1, 1, 3), dilation=(1, 2)),
    # NCHW forward with >= 32 channels, groups 1 and >= 512 output pixels runs on pixel-major
    # columns (forward_tile_via_hwc); fewer pixels stay row-major:
    Case(1, 32, 24, 23, 33, 3, 3, padding=1),
    Case(2, 32, 9, 11, 33, 3, 3, padding=1),
    Case(1, 33, 80, 14, 5, 3, 2, stride=(2, 1), padding=(5, 1, 1, 2), dilation=(2, 1)),  # top rows all padding
    # >= 512 output pixels per tile: grad-weight sums into column-major scratch (gw_sums_column_major)
    Case(2, 3, 24, 23, 5, 3, 3, padding=1),
    Case(1, 4, 26, 22, 6, 3, 3, padding=(1, 0), groups=2),
]


def _random_cases(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        g = int(rng.choice([1, 1, 2, 3]))
        kh, kw = (int(v) for v in rng.integers(1, 8, 2))
        s, d = tuple(int(v) for v in rng.integers(1, 4, 2)), tuple(int(v) for v in rng.integers(1, 4, 2))
        pad = tuple(int(v) for v in rng.integers(0, 4, 4))
        H, W = (int(v) for v in rng.integers(1, 16, 2))
        if H + pad[0] + pad[1] < d[0] * (kh - 1) + 1 or W + pad[2] + pad[3] < d[1] * (kw - 1) + 1:
            continue
        out.append(Case(int(rng.integers(1, 3)), g * int(rng.integers(1, 4)), H, W, g * int(rng.integers(1, 4)),
                        kh, kw, s, pad, d, g))
    return out


CASES += _random_cases(12, seed=4)


def to_layout(a, layout):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


def from_layout(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def inputs(case, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.N, case.C, case.H, case.W))
    w = rng.standard_normal((case.K, case.C // case.groups, case.kh, case.kw))
    b = rng.standard_normal(case.K)
    y = ref.conv2d(x, w, b, **case.kwargs)
    gy = rng.standard_normal(y.shape)
    return x, w, b, y, gy


@pytest.fixture
def buffer_limit():
    """Sets the column-buffer cap for one test and restores it."""
    before = convkit.get_im2col_buffer_limit()
    yield convkit.set_im2col_buffer_limit
    convkit.set_im2col_buffer_limit(before)


# ------------------------------------------------------------------------------ grid
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_backward_match_the_reference(case, dtype, layout):
    x, w, b, y, gy = inputs(case)
    xl, gyl = to_layout(x.astype(dtype), layout), to_layout(gy.astype(dtype), layout)
    wd, bd = w.astype(dtype), b.astype(dtype)
    kw = dict(case.kwargs, layout=layout, algo="im2col")

    assert_close(from_layout(convkit.conv2d(xl, wd, bd, **kw), layout), y, dtype)
    relu = convkit.conv2d(xl, wd, bd, activation="relu", **kw)
    assert_close(from_layout(relu, layout), np.maximum(y, 0), dtype)

    gx, gw, gb = convkit.conv2d_backward(gyl, xl, wd, **kw)
    gx_ref, gw_ref, gb_ref = ref.conv2d_backward(gy, x, w, **case.kwargs)
    assert_close(from_layout(gx, layout), gx_ref, dtype)
    assert_close(gw, gw_ref, dtype)
    assert_close(gb, gb_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_native_nhwc_kernels_on_every_case(case, dtype):
    """The API sends grouped and few-channel NHWC calls through the NCHW kernels; the
    extension's own NHWC path must still be right on every geometry."""
    x, w, b, y, gy = inputs(case)
    g = _args.conv_geometry(x.shape, w.shape, case.stride, case.padding, case.dilation, case.groups)
    geo = (g.stride, g.padding, g.dilation, g.groups)
    xl, gyl, wd = to_layout(x.astype(dtype), "NHWC"), to_layout(gy.astype(dtype), "NHWC"), w.astype(dtype)
    got = _im2col.conv2d_forward(xl, wd, b.astype(dtype), *geo, False, True, 1 << 20)
    assert_close(from_layout(got, "NHWC"), y, dtype)
    gx_ref, gw_ref, _ = ref.conv2d_backward(gy, x, w, **case.kwargs)
    gx = _im2col.conv2d_grad_input(gyl, wd, (case.H, case.W), *geo, True, 1 << 20)
    assert_close(from_layout(gx, "NHWC"), gx_ref, dtype)
    assert_close(_im2col.conv2d_grad_weight(gyl, xl, (case.kh, case.kw), *geo, True, 1 << 20), gw_ref, dtype)


def test_design_worked_example():
    """DESIGN.md's first worked example: cross-correlation, no kernel flip."""
    img = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], float)
    k = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], float)
    y = convkit.conv2d(img[None, None], k[None, None], algo="im2col")
    np.testing.assert_array_equal(y[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


def test_read_only_and_non_contiguous_inputs():
    case = CASES[5]
    x, w, b, y, gy = inputs(case)
    x_ro = x.copy()
    x_ro.flags.writeable = False
    assert_close(convkit.conv2d(x_ro, w, b, **case.kwargs, algo="im2col"), y, np.float64)
    x_nc = np.asfortranarray(x)  # the API makes it contiguous before the kernel sees it
    assert_close(convkit.conv2d(x_nc, w, b, **case.kwargs, algo="im2col"), y, np.float64)


# ------------------------------------------------------------------------ buffer cap
# native NHWC (C >= 4, groups 1); the last two: NCHW forward on pixel-major columns
TILE_CASES = [CASES[5], CASES[9], CASES[13], CASES[17], CASES[22], CASES[23], CASES[24]]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", TILE_CASES, ids=str)
def test_a_small_buffer_cap_tiles_and_gives_the_same_result(case, layout, buffer_limit):
    x, w, b, y, gy = inputs(case)
    xl, gyl = to_layout(x.astype(np.float32), layout), to_layout(gy.astype(np.float32), layout)
    wf, bf = w.astype(np.float32), b.astype(np.float32)
    kw = dict(case.kwargs, layout=layout, algo="im2col")
    whole = (convkit.conv2d(xl, wf, bf, **kw), *convkit.conv2d_backward(gyl, xl, wf, **kw))
    OH, OW = y.shape[2:]
    row_bytes = (case.C // case.groups) * case.kh * case.kw * OW * 4
    for rows in (1, 2):  # one-row tiles, then two (the last one short when OH is odd)
        buffer_limit(rows * row_bytes)
        tiled = []
        for run in (lambda: convkit.conv2d(xl, wf, bf, **kw),
                    lambda: convkit.conv2d_backward(gyl, xl, wf, **kw, need_weight=False, need_bias=False)[0],
                    lambda: convkit.conv2d_backward(gyl, xl, wf, **kw, need_input=False, need_bias=False)[1]):
            tiled.append(run())
            stats = _im2col.last_call_stats()
            assert stats["row_tiles"] == -(-OH // rows) and stats["buffer_bytes"] == min(rows, OH) * row_bytes
        for got, want in zip(tiled, whole[:3]):
            assert_close(got, want.astype(np.float64), np.float32)
    assert_close(from_layout(tiled[0], layout), y, np.float32)


def test_cap_below_one_row_still_runs_one_row_tiles(buffer_limit):
    case = CASES[7]
    x, w, b, y, gy = inputs(case)
    buffer_limit(1)
    assert_close(convkit.conv2d(x, w, b, **case.kwargs, algo="im2col"), y, np.float64)
    assert _im2col.last_call_stats()["row_tiles"] == y.shape[2]


def test_identity_geometry_uses_no_buffer(buffer_limit):
    case = CASES[1]
    x, w, b, y, gy = inputs(case)
    buffer_limit(1)
    assert_close(convkit.conv2d(x, w, b, **case.kwargs, algo="im2col"), y, np.float64)
    assert _im2col.last_call_stats() == {"row_tiles": 1, "buffer_bytes": 0}


def test_buffer_limit_setting(monkeypatch, buffer_limit):
    with pytest.raises(ValueError, match="nbytes"):
        convkit.set_im2col_buffer_limit(0)
    with pytest.raises(TypeError, match="nbytes"):
        convkit.set_im2col_buffer_limit(1.5)
    from convkit import _runtime

    monkeypatch.setenv("CONVKIT_IM2COL_BUFFER_MB", "3")
    assert _runtime._im2col_limit_from_env() == 3 * 2**20
    monkeypatch.delenv("CONVKIT_IM2COL_BUFFER_MB")
    assert _runtime._im2col_limit_from_env() == 256 * 2**20
    monkeypatch.setenv("CONVKIT_IM2COL_BUFFER_MB", "lots")
    with pytest.raises(ValueError, match="CONVKIT_IM2COL_BUFFER_MB"):
        _runtime._im2col_limit_from_env()


# ------------------------------------------------------------- ops over the primitives
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("stride, padding, output_padding, groups, dilation", [
    (2, 1, 1, 1, 1), (2, 0, 0, 2, 1), (3, 2, 1, 1, 2), (1, 1, 0, 3, 2), ((2, 3), (1, 0), (1, 2), 1, (1, 3)),
])
def test_conv_transpose2d(stride, padding, output_padding, groups, dilation, dtype, layout):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 5, 4))
    w = rng.standard_normal((6, 6 // groups, 3, 4))
    b = rng.standard_normal(6)
    args = (stride, padding, output_padding, groups, dilation)
    y = ref.conv_transpose2d(x, w, b, *args)
    gy = rng.standard_normal(y.shape)
    xl, gyl, wd = to_layout(x.astype(dtype), layout), to_layout(gy.astype(dtype), layout), w.astype(dtype)
    got = convkit.conv_transpose2d(xl, wd, b.astype(dtype), *args, layout=layout, algo="im2col")
    assert_close(from_layout(got, layout), y, dtype)
    gx, gw, gb = convkit.conv_transpose2d_backward(gyl, xl, wd, *args, layout=layout, algo="im2col")
    gx_ref, gw_ref, gb_ref = ref.conv_transpose2d_backward(gy, x, w, *args)
    assert_close(from_layout(gx, layout), gx_ref, dtype)
    assert_close(gw, gw_ref, dtype)
    assert_close(gb, gb_ref, dtype)


def test_depthwise_and_separable():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 8))
    dw = rng.standard_normal((8, 1, 3, 3))
    pw = rng.standard_normal((5, 8, 1, 1))
    b = rng.standard_normal(5)
    y = ref.separable_conv2d(x, dw, pw, b, 2, 1, 1)
    assert_close(convkit.separable_conv2d(x, dw, pw, b, 2, 1, 1, algo="im2col"), y, np.float64)
    gy = rng.standard_normal(y.shape)
    got = convkit.separable_conv2d_backward(gy, x, dw, pw, 2, 1, 1, algo="im2col")
    for g, g_ref in zip(got, ref.separable_conv2d_backward(gy, x, dw, pw, 2, 1, 1)):
        assert_close(g, g_ref, np.float64)


# ------------------------------------------------------------------------ bad input
def test_the_extension_rechecks_shapes():
    """Called directly, past the API's checks: a ValueError/TypeError, never a bad write."""
    x = np.zeros((1, 4, 6, 6), np.float32)
    w = np.zeros((6, 2, 3, 3), np.float32)
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 2)
    big = 1 << 20
    with pytest.raises(ValueError, match="grad_output"):
        _im2col.conv2d_grad_input(np.zeros((1, 6, 5, 6), np.float32), w, (6, 6), *args, False, big)
    with pytest.raises(ValueError, match="grad_output"):
        _im2col.conv2d_grad_weight(np.zeros((1, 6, 6, 6), np.float32), x, (3, 3), *args, True, big)
    with pytest.raises(ValueError, match="bias"):
        _im2col.conv2d_forward(x, w, np.zeros(5, np.float32), *args, False, False, big)
    with pytest.raises(ValueError, match="groups"):
        _im2col.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 3, False, False, big)
    with pytest.raises(ValueError, match="groups"):
        _im2col.conv2d_grad_weight(np.zeros((1, 6, 6, 6), np.float32), x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3,
                                   False, big)
    with pytest.raises(ValueError, match="larger than the padded input"):
        _im2col.conv2d_forward(x, np.zeros((6, 2, 9, 9), np.float32), None, (1, 1), (0, 0, 0, 0), (1, 1), 2, False,
                               False, big)
    with pytest.raises(ValueError, match="padding"):
        _im2col.conv2d_forward(x, w, None, (1, 1), (1, -1, 1, 1), (1, 1), 2, False, False, big)
    with pytest.raises(ValueError, match="buffer_limit"):
        _im2col.conv2d_forward(x, w, None, *args, False, False, 0)
    with pytest.raises(ValueError, match="contiguous"):
        _im2col.conv2d_forward(np.asfortranarray(x), w, None, *args, False, False, big)
    with pytest.raises(ValueError, match="dtype mismatch"):
        _im2col.conv2d_forward(x, w.astype(np.float64), None, *args, False, False, big)


def test_empty_batch():
    x, w = np.zeros((0, 2, 5, 5)), np.ones((3, 2, 3, 3))
    assert convkit.conv2d(x, w, algo="im2col").shape == (0, 3, 3, 3)
    gx, gw, _ = convkit.conv2d_backward(np.zeros((0, 3, 3, 3)), x, w, algo="im2col")
    assert gx.shape == (0, 2, 5, 5)
    np.testing.assert_array_equal(gw, np.zeros((3, 2, 3, 3)))


# --------------------------------------------------------------------------- threads
def test_set_num_threads_reaches_scipys_blas_for_the_call_only(monkeypatch):
    """convkit.set_num_threads(n) sets the BLAS im2col multiplies with to n threads while
    convkit's call runs and gives it back its own count afterwards; NumPy's own BLAS
    (a separate library in the wheels) is never touched."""
    from threadpoolctl import ThreadpoolController, threadpool_limits

    from convkit._runtime import scipy_blas

    ours = scipy_blas()
    assert ours and all(lib.user_api == "blas" for lib in ours)
    others = [lib for lib in ThreadpoolController().lib_controllers
              if lib.user_api == "blas" and lib.filepath not in {o.filepath for o in ours}]
    seen = []
    real = _im2col.conv2d_forward

    def spy(*args):
        seen.append(([lib.num_threads for lib in ours], [lib.num_threads for lib in others]))
        return real(*args)

    monkeypatch.setattr(_im2col, "conv2d_forward", spy)
    case = CASES[4]
    x, w, b, y, gy = inputs(case)
    before = convkit.get_num_threads()
    try:
        for convkit_n, blas_n in ((1, 3), (3, 1)):
            convkit.set_num_threads(convkit_n)
            with threadpool_limits(limits=blas_n, user_api="blas"):
                outside = [lib.num_threads for lib in others]
                assert_close(convkit.conv2d(x, w, b, **case.kwargs, algo="im2col"), y, np.float64)
                assert seen[-1] == ([convkit.get_num_threads()] * len(ours), outside)
                assert [lib.num_threads for lib in ours] == [blas_n] * len(ours)
    finally:
        convkit.set_num_threads(before)
