"""The direct engine (algo="direct", src/conv_direct.cpp + kernels/cpu) against the float64
reference, on every ISA this CPU has, with the shapes that stress its microkernels'
edges: output-channel counts around the register tile R, flat pixel counts around the
tile width P, grad-weight blocks around R entries x KB channels, 1x1 images, kernels
larger than the image, every stride phase of grad-input, both layouts, both dtypes.
Each tile shape the ISA offers is forced in turn (convkit._cpu.force_conv_kernels), so
every compiled kernel is checked, not only those the cost model picks for small layers.
"""
import contextlib

import numpy as np
import pytest

import convkit
from convkit import _cpu, reference

ISAS = ("scalar", "avx2", "avx512")
AVAILABLE = ISAS[: ISAS.index(_cpu.detected_isa()) + 1]


@contextlib.contextmanager
def using(isa_name, direct="", gw="", fold=-1):
    """Run on isa_name with the named kernels and the forward's input layout (fold 0:
    stride-phase planes, 1: folded tap columns) forced ("", -1: the cost model's choice)."""
    before = convkit.get_isa()
    convkit.set_isa(isa_name)
    _cpu.force_conv_kernels(direct, gw, fold)
    try:
        yield
    finally:
        _cpu.force_conv_kernels("", "", -1)
        convkit.set_isa(before)


@pytest.fixture(params=AVAILABLE)
def isa(request):
    with using(request.param):
        yield request.param


@pytest.fixture(params=[0, 1], ids=["phased", "folded"])
def fold(request):
    return request.param


def assert_close(got, ref, dtype):
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max(initial=0))))


def to_layout(a, layout):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


def from_layout(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def check_conv2d(rng, N, C, H, W, K, kernel, stride=1, padding=0, dilation=1, groups=1, dtype=np.float32,
                 layout="NCHW", relu=True):
    """Forward (bias, ReLU), grad-input and grad-weight of algo="direct" vs the reference."""
    kh, kw = kernel
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C // groups, kh, kw))
    b = rng.standard_normal(K)
    y_ref = reference.conv2d(x, w, b, stride, padding, dilation, groups)
    gy = rng.standard_normal(y_ref.shape)
    gx_ref, gw_ref, _ = reference.conv2d_backward(gy, x, w, stride, padding, dilation, groups)
    xl, gyl = to_layout(x.astype(dtype), layout), to_layout(gy.astype(dtype), layout)
    y = convkit.conv2d(xl, w.astype(dtype), b.astype(dtype), stride, padding, dilation, groups,
                       activation="relu" if relu else None, layout=layout, algo="direct")
    assert y.dtype == dtype
    assert_close(from_layout(y, layout), np.maximum(y_ref, 0) if relu else y_ref, dtype)
    gx, gw, _ = convkit.conv2d_backward(gyl, xl, w.astype(dtype), stride, padding, dilation, groups,
                                        need_bias=False, layout=layout, algo="direct")
    assert_close(from_layout(gx, layout), gx_ref, dtype)
    assert_close(gw, gw_ref, dtype)


# --------------------------------------------------------------- every tile, its edges
def kernels(kind):
    """(isa, kernel) for every float32 kernel of every available ISA, by kind."""
    out = []
    for isa_name in AVAILABLE:
        with using(isa_name):
            out += [(isa_name, k) for k in _cpu.conv_kernels("float32") if ("P" in k) == (kind == "direct")]
    return out


@pytest.mark.parametrize("isa_kernel", kernels("direct"), ids=lambda p: p[1]["name"])
def test_direct_tile_edges(isa_kernel, fold):
    """Output channels around R, flat pixels around P, for one forced direct tile."""
    isa_name, k = isa_kernel
    R, P = k["R"], k["P"]
    rng = np.random.default_rng(R * 1000 + P)
    with using(isa_name, direct=k["name"], fold=fold):
        for K in sorted({1, max(1, R - 1), R, R + 1, 2 * R + 1}):
            # 1x1, one image row: exactly P - 1, P, P + 1 flat pixels.
            for width in (P - 1, P, P + 1):
                check_conv2d(rng, 1, 3, 1, width, K, (1, 1))
        # Rows narrower and wider than the tile, 3x3 with padding: tiles straddle rows.
        check_conv2d(rng, 2, 5, 7, 3, R + 1, (3, 3), padding=1)
        check_conv2d(rng, 1, 4, 3, P + 5, 2 * R, (3, 3), padding=(0, 2))
        # Stride 2 grad-input: four phases, the two of odd rows without taps (kernel height 1).
        check_conv2d(rng, 1, R + 2, 9, 10, 3, (1, 3), stride=2, padding=1, layout="NHWC")


@pytest.mark.parametrize("isa_kernel", kernels("gw"), ids=lambda p: p[1]["name"])
def test_grad_weight_tile_edges(isa_kernel):
    """Output channels around KB, reduction entries (C*kh*kw) around R, for one forced tile."""
    isa_name, k = isa_kernel
    R, KB = k["R"], k["KB"]
    rng = np.random.default_rng(R * 1000 + KB)
    with using(isa_name, gw=k["name"]):
        for K in sorted({1, KB - 1, KB, KB + 1}):
            for C in sorted({1, max(1, R - 1), R, R + 1}):
                check_conv2d(rng, 2, C, 3, 4, K, (1, 1))
        check_conv2d(rng, 3, R // 2 + 1, 6, 5, KB + 3, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2))
        # ResNet-stem-like: 147 entries, in R-blocks that split unevenly over the tasks.
        check_conv2d(rng, 1, 3, 48, 48, KB, (7, 7), stride=2, padding=3)
        # Entries in both orders: channel-major (small padding, above), tap-major where the
        # taps read mostly padding (ASPP-like: each R-block runs over its taps' box only).
        check_conv2d(rng, 1, R + 1, 20, 19, KB + 1, (3, 3), padding=8, dilation=8)


# --------------------------------------------------------------------- geometry grid
GRID = [
    # N, C, H, W, K, kernel, stride, padding, dilation, groups
    (1, 3, 8, 8, 4, (1, 1), 1, 0, 1, 1),
    (2, 4, 9, 7, 6, (2, 3), 1, 0, 1, 1),
    (1, 5, 11, 10, 7, (3, 3), 1, 1, 1, 1),
    (2, 6, 12, 13, 4, (3, 3), 2, 1, 1, 2),
    (1, 4, 10, 9, 9, (3, 3), 3, "same", 1, 1),
    (1, 3, 13, 12, 5, (3, 3), 1, "same", 2, 1),
    (2, 2, 14, 11, 3, (3, 3), 1, 3, 3, 1),
    (1, 6, 9, 9, 6, (4, 4), 2, (1, 2, 0, 3), 1, 3),
    (1, 3, 15, 14, 8, (5, 5), 2, 2, 1, 1),
    (1, 2, 16, 17, 4, (7, 7), 2, 3, 1, 1),
    (2, 4, 8, 10, 6, (1, 7), 1, (0, 3), 1, 2),
    (1, 3, 12, 9, 2, (7, 1), (3, 1), (3, 0), (1, 2), 1),
    (1, 5, 10, 10, 5, (2, 2), 3, 0, 2, 1),
    (3, 1, 12, 12, 6, (5, 5), 1, 0, 1, 1),           # LeNet-like: one input channel
    (1, 4, 6, 6, 8, (3, 3), 1, 12, 12, 1),          # ASPP-like: most taps in padding
    (1, 3, 40, 40, 5, (3, 3), 1, 12, 12, 1),        # ASPP-like: row and column bands of valid taps
    (1, 2, 1, 1, 3, (1, 1), 1, 0, 1, 1),            # 1x1 image
    (2, 3, 1, 1, 4, (3, 3), 1, 1, 1, 1),            # 1x1 image, 3x3 kernel, padding
    (1, 2, 2, 3, 3, (5, 5), 1, 2, 1, 1),            # kernel larger than the image
    (1, 3, 3, 2, 2, (3, 3), 3, 2, 2, 1),            # kernel and stride larger than the image
    (1, 2, 3, 1, 2, (1, 2), 1, (0, 2), (1, 4), 1),  # every tap column reads only padding
    (1, 6, 7, 7, 6, (3, 3), 1, 1, 1, 6),            # depthwise (NHWC runs the engine)
    (2, 4, 6, 5, 8, (3, 3), 2, 1, 1, 4),            # depthwise, channel multiplier 2
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5][0]}{c[5][1]}")
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_grid(isa, case, layout):
    rng = np.random.default_rng(len(str(case)))
    N, C, H, W, K, kernel, s, p, d, g = case
    for dtype in (np.float32, np.float64):
        check_conv2d(rng, N, C, H, W, K, kernel, s, p, d, g, dtype=dtype, layout=layout, relu=dtype == np.float32)
    for fold in (0, 1):  # both input layouts of the forward, whichever the cost model picks
        with using(isa, fold=fold):
            check_conv2d(rng, N, C, H, W, K, kernel, s, p, d, g, layout=layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_medium_layer(isa, layout):
    """Sizes past every register block: grad-weight's SIMD transposes (16 x 16 on AVX-512)
    of grad_output and of its sums run whole blocks, not only their edges; grad-input
    transposes its weights (over 512 input pixels; smaller images read them in place)."""
    rng = np.random.default_rng(17)
    check_conv2d(rng, 2, 20, 18, 19, 37, (3, 3), padding=1, layout=layout)
    check_conv2d(rng, 2, 12, 17, 16, 10, (3, 2), stride=(2, 1), padding=1, groups=2, layout=layout)
    check_conv2d(rng, 1, 33, 9, 40, 18, (1, 1), layout=layout)


# ------------------------------------------------------------------ conv_transpose2d
TRANSPOSED = [
    # N, C, H, W, K, kernel, stride, padding, output_padding, groups, dilation
    (2, 4, 5, 5, 3, (4, 4), 2, 1, 0, 1, 1),
    (1, 6, 4, 6, 4, (2, 2), 2, 0, 0, 2, 1),
    (1, 3, 6, 5, 2, (3, 3), 2, 1, 1, 1, 1),
    (1, 4, 3, 4, 6, (3, 2), 3, (1, 0), (2, 1), 2, (1, 2)),
    (1, 2, 4, 4, 3, (3, 3), 1, 2, 1, 1, 3),
    (1, 8, 9, 13, 6, (2, 2), 2, 0, 0, 1, 1),    # U-Net-like: grad_output read in place
]


@pytest.mark.parametrize("case", TRANSPOSED)
def test_conv_transpose2d(isa, case):
    N, C, H, W, K, kernel, s, p, op, g, d = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((C, K // g, *kernel))
    b = rng.standard_normal(K)
    y_ref = reference.conv_transpose2d(x, w, b, s, p, op, g, d)
    gy = rng.standard_normal(y_ref.shape)
    gx_ref, gw_ref, _ = reference.conv_transpose2d_backward(gy, x, w, s, p, op, g, d)
    for dtype in (np.float32, np.float64):
        y = convkit.conv_transpose2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), s, p, op, g, d,
                                     algo="direct")
        assert_close(y, y_ref, dtype)
        gx, gw, _ = convkit.conv_transpose2d_backward(gy.astype(dtype), x.astype(dtype), w.astype(dtype), s, p, op,
                                                      g, d, need_bias=False, algo="direct")
        assert_close(gx, gx_ref, dtype)
        assert_close(gw, gw_ref, dtype)


@pytest.mark.parametrize("s, p, d", [(1, 0, 1), (2, 1, 1), (3, 2, 2), (2, (0, 1, 2, 0), (2, 1))])
def test_adjoint_identity(isa, s, p, d):
    """<conv2d(x), y> == <x, grad_input(y)>: grad-input is the forward's exact adjoint."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 11))
    w = rng.standard_normal((6, 2, 3, 4))
    y = convkit.conv2d(x, w, None, s, p, d, 2, algo="direct")
    v = rng.standard_normal(y.shape)
    gx, _, _ = convkit.conv2d_backward(v, x, w, s, p, d, 2, need_weight=False, need_bias=False, algo="direct")
    np.testing.assert_allclose(np.vdot(y, v), np.vdot(x, gx), rtol=1e-12)


# ------------------------------------------------------------- determinism, NaN, Inf
def run_all(x, w, b, gy, **geo):
    y = convkit.conv2d(x, w, b, **geo, algo="direct")
    gx, gw, _ = convkit.conv2d_backward(gy, x, w, **geo, need_bias=False, algo="direct")
    return y, gx, gw


@pytest.mark.parametrize("shape", [
    dict(N=1, C=32, H=20, W=20, K=40, k=3, stride=1, padding=1),   # batch 1: tiles split over threads
    dict(N=9, C=1, H=14, W=14, K=6, k=5, stride=1, padding=0),     # LeNet-like: grad-weight's batch slices
    dict(N=2, C=16, H=15, W=13, K=24, k=3, stride=2, padding=1),
])
def test_bit_identical_any_thread_count(shape):
    rng = np.random.default_rng(11)
    N, C, H, W, K, k = (shape[n] for n in "N C H W K k".split())
    geo = dict(stride=shape["stride"], padding=shape["padding"])
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((K, C, k, k), dtype=np.float32)
    b = rng.standard_normal(K, dtype=np.float32)
    gy = rng.standard_normal(convkit.conv2d(x, w, b, **geo).shape, dtype=np.float32)
    threads = convkit.get_num_threads()
    try:
        convkit.set_num_threads(1)
        one = run_all(x, w, b, gy, **geo)
        convkit.set_num_threads(2)
        two = run_all(x, w, b, gy, **geo)
        again = run_all(x, w, b, gy, **geo)
    finally:
        convkit.set_num_threads(threads)
    for a, b2, c in zip(one, two, again):
        np.testing.assert_array_equal(a, b2)
        np.testing.assert_array_equal(b2, c)


def test_relu_propagates_nan(isa):
    x = np.ones((1, 2, 6, 6), dtype=np.float32)
    x[0, 1, 2, 3] = np.nan
    w = -np.ones((3, 2, 3, 3), dtype=np.float32)
    y = convkit.conv2d(x, w, None, padding=1, activation="relu", algo="direct")
    nan = np.zeros((6, 6), bool)
    nan[1:4, 2:5] = True
    for k in range(3):
        assert np.array_equal(np.isnan(y[0, k]), nan)
        assert (y[0, k][~nan] == 0).all()  # all-negative sums clamp to 0


def test_grad_weight_ignores_unused_pixels(isa):
    """A non-finite input pixel that no window reads must not reach grad-weight (0 * inf)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 10, 10), dtype=np.float32)
    x[:, :, -1, :] = np.inf   # stride 2, 3x3, no padding: the windows stop at row/col 8
    x[:, :, :, -1] = np.nan
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    gy = rng.standard_normal((2, 4, 4, 4), dtype=np.float32)
    _, gw, _ = convkit.conv2d_backward(gy, x, w, stride=2, need_input=False, need_bias=False, algo="direct")
    _, gw_ref, _ = reference.conv2d_backward(gy, x[:, :, :-1, :-1], w, stride=2)
    assert np.isfinite(gw).all()
    assert_close(gw, gw_ref, np.float32)


def test_kernel_names_follow_the_isa(isa):
    names = [k["name"] for k in _cpu.conv_kernels("float32")]
    assert names and all(n.startswith("f32_conv_") and n.endswith("__" + isa) for n in names)
    assert all(k["name"].startswith("f64_") and k["name"].endswith("__scalar") for k in _cpu.conv_kernels("float64"))
