"""Tests of the float64 NumPy reference (convkit.reference).

Everything here compares against numbers that do not come from the reference itself:
the worked examples of DESIGN.md, scipy.signal, hand-built matrices, naive per-pixel
loops, central finite differences, and (when installed) torch.nn.functional.
"""

import itertools

import numpy as np
import pytest

from convkit import reference as ref

RNG_SEED = 20240601


@pytest.fixture
def rng():
    return np.random.default_rng(RNG_SEED)


# ---------------------------------------------------------------------------
# helpers (independent of the reference implementation)
# ---------------------------------------------------------------------------

def fd_grad(f, a, eps=1e-3):
    """Central finite differences of the scalar f() w.r.t. every element of a (in place)."""
    flat = a.reshape(-1)
    assert np.shares_memory(flat, a)
    g = np.empty(a.size)
    for i in range(a.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g.reshape(a.shape)


def assert_fd(analytic, f, a, atol=1e-7):
    np.testing.assert_allclose(analytic, fd_grad(f, a), rtol=1e-7, atol=atol)


def naive_conv2d(x, w, b, stride, pads, dilation, groups):
    """Per-output-pixel loop; pads = (top, bottom, left, right)."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    Kg = K // groups
    y = np.zeros((N, K, oh, ow))
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for a in range(oh):
                for c in range(ow):
                    win = xp[n, g * Cg:(g + 1) * Cg,
                             a * sh:a * sh + dh * (kh - 1) + 1:dh,
                             c * sw:c * sw + dw * (kw - 1) + 1:dw]
                    y[n, k, a, c] = np.sum(win * w[k]) + (0.0 if b is None else b[k])
    return y


def naive_max_pool(x, k, s, p, d, ceil_mode):
    """Per-window loop over the in-bounds taps: first maximum, first NaN wins."""
    N, C, H, W = x.shape
    out = []
    for size, kk, ss, pp, dd in ((H, k[0], s[0], p[0], d[0]), (W, k[1], s[1], p[1], d[1])):
        span = size + 2 * pp - dd * (kk - 1) - 1
        o = (-(-span // ss) if ceil_mode else span // ss) + 1
        if ceil_mode and (o - 1) * ss >= size + pp:
            o -= 1
        out.append(o)
    oh, ow = out
    y = np.empty((N, C, oh, ow))
    idx = np.empty((N, C, oh, ow), dtype=np.int64)
    for n, c, a, e in itertools.product(range(N), range(C), range(oh), range(ow)):
        best, bi = None, None
        for i in range(k[0]):
            r = a * s[0] - p[0] + i * d[0]
            for j in range(k[1]):
                q = e * s[1] - p[1] + j * d[1]
                if not (0 <= r < H and 0 <= q < W):
                    continue
                v = x[n, c, r, q]
                if best is None or (not np.isnan(best) and (v > best or np.isnan(v))):
                    best, bi = v, r * W + q
        y[n, c, a, e], idx[n, c, a, e] = best, bi
    return y, idx


# ---------------------------------------------------------------------------
# worked examples of DESIGN.md
# ---------------------------------------------------------------------------

IMG6 = np.array([[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 0],
                 [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0]], dtype=float)
FILT_A = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
FILT_B = np.array([[-1, 1, -1], [-1, 1, -1], [-1, 1, -1]], dtype=float)
OUT_A = [[3, -1, -3, -1], [-3, 1, 0, -3], [-3, -3, 0, 1], [3, -2, -2, -1]]
OUT_B = [[-1, -1, -1, -1], [-1, -1, -2, 1], [-1, -1, -2, 1], [-1, 0, -4, 3]]


def test_example_5x5():
    img = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    ker = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    y = ref.conv2d(img[None, None], ker[None, None])
    assert y.shape == (1, 1, 3, 3) and y.dtype == np.float64
    np.testing.assert_array_equal(y[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


def test_example_6x6_two_filters():
    x = IMG6[None, None]
    np.testing.assert_array_equal(ref.conv2d(x, FILT_A[None, None])[0, 0], OUT_A)
    np.testing.assert_array_equal(ref.conv2d(x, FILT_B[None, None])[0, 0], OUT_B)
    np.testing.assert_array_equal(ref.conv2d(x, FILT_A[None, None], stride=2)[0, 0], [[3, -3], [-3, 0]])
    both = np.stack([FILT_A, FILT_B])[:, None]  # (2, 1, 3, 3)
    y = ref.conv2d(x, both)
    assert y.shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(y[0], np.stack([OUT_A, OUT_B]))


def test_example_sobel_vs_scipy(rng):
    signal = pytest.importorskip("scipy.signal")
    img = rng.standard_normal((512, 512))
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=float)
    y = ref.conv2d(img[None, None], sobel[None, None])
    assert y.shape == (1, 1, 510, 510)
    np.testing.assert_allclose(y[0, 0], signal.correlate2d(img, sobel, "valid"), rtol=1e-12, atol=1e-12)
    # cross-correlation, not convolution: the flipped kernel gives the negated image here
    assert not np.allclose(y[0, 0], signal.convolve2d(img, sobel, "valid"))


@pytest.mark.parametrize("img, expected", [
    ([[1, 2, 5, 3], [3, 0, 1, 2], [2, 1, 3, 4], [1, 1, 2, 0]], [[3, 5], [2, 4]]),
    ([[12, 20, 30, 0], [8, 12, 2, 0], [34, 70, 37, 4], [112, 100, 25, 12]], [[20, 30], [112, 37]]),
    ([[6, 3, 1, -3], [4, 1, 2, 0], [3, 1, 3, 2], [7, 1, 1, 1]], [[6, 2], [7, 3]]),
])
def test_example_max_pool_2x2(img, expected):
    x = np.array(img, dtype=float)[None, None]
    np.testing.assert_array_equal(ref.max_pool2d(x, 2, 2)[0, 0], expected)
    np.testing.assert_array_equal(ref.max_pool2d(x, 2)[0, 0], expected)  # stride defaults to kernel


def test_example_max_pool_indices():
    x = np.array([[1, 2, 5, 3], [3, 0, 1, 2], [2, 1, 3, 4], [1, 1, 2, 0]], dtype=float)[None, None]
    y, idx = ref.max_pool2d(x, 2, return_indices=True)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx[0, 0], [[4, 2], [8, 11]])  # (1,0) (0,2) (2,0) (2,3)


def test_example_sizes_and_counts(rng):
    x = rng.standard_normal((1, 1, 7, 7))
    w = rng.standard_normal((1, 1, 3, 3))
    assert ref.conv2d(x, w).shape == (1, 1, 5, 5)
    assert ref.conv2d(x, w, padding=1).shape == (1, 1, 7, 7)
    assert ref.conv2d_output_size(7, 7, 3) == (5, 5)
    assert ref.conv2d_output_size(7, 7, 3, 1, 1) == (7, 7)
    x3 = rng.standard_normal((1, 3, 7, 7))
    w5 = np.zeros((5, 3, 3, 3))
    b5 = np.zeros(5)
    assert ref.conv2d(x3, w5, b5).shape == (1, 5, 5, 5)
    assert w5.size + b5.size == 140
    dw = np.zeros((16, 1, 3, 3))
    pw = np.zeros((32, 16, 1, 1))
    assert dw.size + pw.size == 16 * 3 * 3 + 32 * 16 == 656
    assert ref.separable_conv2d(rng.standard_normal((1, 16, 7, 7)), dw, pw).shape == (1, 32, 5, 5)


def test_example_adjoint_3x3_kernel_4x4_to_2x2(rng):
    ker = rng.standard_normal((3, 3))
    # the 4x16 matrix of the convolution, built by hand: row (a, b) holds the kernel at (a, b)
    M = np.zeros((4, 16))
    for a in range(2):
        for b in range(2):
            grid = np.zeros((4, 4))
            grid[a:a + 3, b:b + 3] = ker
            M[a * 2 + b] = grid.ravel()
    x = rng.standard_normal((1, 1, 4, 4))
    y = rng.standard_normal((1, 1, 2, 2))
    w = ker[None, None]
    cx = ref.conv2d(x, w)
    ty = ref.conv_transpose2d(y, w)
    assert cx.shape == (1, 1, 2, 2) and ty.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(cx.ravel(), M @ x.ravel(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ty.ravel(), M.T @ y.ravel(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.vdot(cx, y), np.vdot(x, ty), rtol=1e-12)


def test_example_backprop_3x3_input_2x2_kernel_pad1(rng):
    signal = pytest.importorskip("scipy.signal")
    x = rng.standard_normal((3, 3))
    w = rng.standard_normal((2, 2))
    y = ref.conv2d(x[None, None], w[None, None], padding=1)
    assert y.shape == (1, 1, 4, 4)
    go = rng.standard_normal((4, 4))
    gx, gw, gb = ref.conv2d_backward(go[None, None], x[None, None], w[None, None], padding=1)
    # dL/dw: correlation of the (padded) input with dL/dz
    np.testing.assert_allclose(gw[0, 0], signal.correlate2d(np.pad(x, 1), go, "valid"), rtol=1e-12)
    # dL/dx: full convolution of dL/dz with the flipped kernel, cropped by the padding
    full = signal.correlate2d(go, np.rot90(w, 2), "full")
    assert full.shape == (5, 5)
    np.testing.assert_allclose(gx[0, 0], full[1:4, 1:4], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, [go.sum()], rtol=1e-12)


# ---------------------------------------------------------------------------
# forward against naive loops
# ---------------------------------------------------------------------------

CONV_CASES = [
    # (C, K, H, W, kernel, stride, padding, dilation, groups)
    (3, 4, 6, 7, (3, 3), 1, 0, 1, 1),
    (4, 6, 7, 6, (3, 3), 2, 1, 1, 1),
    (4, 6, 8, 7, (3, 2), (1, 2), (1, 2), 2, 2),
    (4, 4, 7, 8, (2, 4), (2, 1), "same", 1, 2),
    (2, 3, 6, 6, (4, 3), 2, "SAME", (1, 2), 1),
    (2, 4, 6, 7, (3, 3), 1, (0, 2, 1, 0), 1, 2),
    (2, 2, 5, 5, (3, 3), 3, "valid", 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_vs_naive(case, rng):
    C, K, H, W, k, s, p, d, g = case
    x = rng.standard_normal((2, C, H, W))
    w = rng.standard_normal((K, C // g) + k)
    b = rng.standard_normal(K)
    pads = ref.resolve_padding(p, (H, W), k, s, d)
    s2 = s if isinstance(s, tuple) else (s, s)
    d2 = d if isinstance(d, tuple) else (d, d)
    y = ref.conv2d(x, w, b, s, p, d, g)
    np.testing.assert_allclose(y, naive_conv2d(x, w, b, s2, pads, d2, g), rtol=1e-12, atol=1e-12)
    assert y.flags.c_contiguous


def test_conv2d_accepts_lists_and_ints():
    x = np.arange(2 * 5 * 5).reshape(1, 2, 5, 5).tolist()  # nested lists of ints
    w = np.ones((1, 2, 2, 2)).tolist()
    y = ref.conv2d(x, w)
    assert y.dtype == np.float64
    xa = np.arange(50.0).reshape(2, 5, 5)
    assert y[0, 0, 0, 0] == xa[:, :2, :2].sum()


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("k, s, p, d", [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 2), ((3, 2), (2, 1), (1, 0), (1, 2))])
def test_max_pool_vs_naive(k, s, p, d, ceil_mode, rng):
    x = rng.integers(0, 4, size=(2, 2, 7, 8)).astype(float)  # many ties
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    y, idx = ref.max_pool2d(x, k, s, p, d, ceil_mode, return_indices=True)
    ye, ie = naive_max_pool(x, pair(k), pair(s), pair(p), pair(d), ceil_mode)
    np.testing.assert_array_equal(y, ye)
    np.testing.assert_array_equal(idx, ie)


def test_avg_pool_hand_values():
    ones = np.ones((1, 1, 3, 3))
    # k=2, s=2, pad 1: windows [-1,1) and [1,3) per dim, 1 and 2 input elements of 2
    np.testing.assert_allclose(ref.avg_pool2d(ones, 2, 2, 1)[0, 0], [[0.25, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(ref.avg_pool2d(ones, 2, 2, 1, count_include_pad=False)[0, 0], np.ones((2, 2)))
    np.testing.assert_allclose(ref.avg_pool2d(ones, 2, 2, 1, divisor_override=3)[0, 0], [[1 / 3, 2 / 3], [2 / 3, 4 / 3]])
    # ceil_mode, H=W=6, k=3, s=2, p=1: starts -1,1,3,5; ends 2,4,6,7 (clipped to H+P=7)
    # pool sizes 3,3,3,2; input counts 2,3,3,1
    ones6 = np.ones((1, 1, 6, 6))
    f = np.array([2 / 3, 1, 1, 1 / 2])
    np.testing.assert_allclose(ref.avg_pool2d(ones6, 3, 2, 1, ceil_mode=True)[0, 0], np.outer(f, f))
    np.testing.assert_allclose(ref.avg_pool2d(ones6, 3, 2, 1, ceil_mode=True, count_include_pad=False)[0, 0],
                               np.ones((4, 4)))
    # ceil_mode without padding: last window [4,6) is clipped to H+P=5 before counting
    ones5 = np.ones((1, 1, 5, 5))
    np.testing.assert_allclose(ref.avg_pool2d(ones5, 2, 2, 0, ceil_mode=True)[0, 0], np.ones((3, 3)))
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_allclose(ref.avg_pool2d(x, 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_global_pools(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose(ref.global_avg_pool2d(x), x.mean(axis=(2, 3))[..., None, None], rtol=1e-12)
    y, idx = ref.global_max_pool2d(x, return_indices=True)
    assert y.shape == idx.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(idx[..., 0, 0], x.reshape(2, 3, -1).argmax(-1))
    x[0, 1, 2, 1] = np.nan
    x[0, 1, 3, 0] = np.nan
    y, idx = ref.global_max_pool2d(x, return_indices=True)
    assert np.isnan(y[0, 1, 0, 0]) and idx[0, 1, 0, 0] == 2 * 4 + 1
    assert not np.isnan(y[1]).any()


# ---------------------------------------------------------------------------
# max pool ties and NaN
# ---------------------------------------------------------------------------

def test_max_pool_ties_take_first_index():
    _, idx = ref.max_pool2d(np.ones((1, 1, 2, 2)), 2, return_indices=True)
    assert idx[0, 0, 0, 0] == 0
    _, idx = ref.max_pool2d(np.array([[[[0.0, 2.0], [2.0, 1.0]]]]), 2, return_indices=True)
    assert idx[0, 0, 0, 0] == 1
    _, idx = ref.max_pool2d(np.array([[[[1.0, 3.0, 0.0], [3.0, 0.0, 3.0], [0.0, 3.0, 3.0]]]]), 3,
                            return_indices=True)
    assert idx[0, 0, 0, 0] == 1
    # overlapping windows with -inf padding on a constant image (values as torch gives them)
    _, idx = ref.max_pool2d(np.ones((1, 1, 4, 4)), 3, 1, 1, return_indices=True)
    np.testing.assert_array_equal(idx[0, 0], [[0, 0, 1, 2], [0, 0, 1, 2], [4, 4, 5, 6], [8, 8, 9, 10]])
    # all -inf window: the first input element, not a padding position
    y, idx = ref.max_pool2d(np.full((1, 1, 2, 2), -np.inf), 3, 1, 1, return_indices=True)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(idx[0, 0], [[0, 0], [0, 0]])
    # gradient of a tie goes to the first element only
    gx = ref.max_pool2d_backward(np.full((1, 1, 1, 1), 7.0), np.ones((1, 1, 2, 2)), 2)
    np.testing.assert_array_equal(gx[0, 0], [[7, 0], [0, 0]])


def test_max_pool_nan_propagates():
    x = np.array([[[[1.0, np.nan, 5.0, 3.0], [np.nan, 9.0, 1.0, 2.0]]]])
    y, idx = ref.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 5.0
    np.testing.assert_array_equal(idx[0, 0], [[1, 2]])  # first NaN, in scan order
    y, idx = ref.max_pool2d(np.array([[[[np.nan, 9.0], [8.0, np.nan]]]]), 2, return_indices=True)
    assert np.isnan(y).all() and idx[0, 0, 0, 0] == 0
    y = ref.max_pool2d(np.array([[[[np.inf, 1.0], [np.nan, 2.0]]]]), 2)
    assert np.isnan(y).all()  # NaN beats +inf
    gx = ref.max_pool2d_backward(np.ones((1, 1, 1, 2)), x, 2)
    np.testing.assert_array_equal(gx[0, 0], [[0, 1, 1, 0], [0, 0, 0, 0]])


# ---------------------------------------------------------------------------
# "same" padding and output sizes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size, k, s, d, expected", [
    (5, 3, 1, 1, (1, 1)), (6, 3, 1, 1, (1, 1)), (6, 4, 1, 1, (1, 2)), (5, 2, 1, 1, (0, 1)),
    (6, 3, 2, 1, (0, 1)), (5, 3, 2, 1, (1, 1)), (7, 1, 3, 1, (0, 0)), (8, 3, 3, 1, (0, 1)),
    (5, 3, 1, 2, (2, 2)), (7, 4, 3, 1, (1, 2)), (4, 5, 3, 1, (2, 2)),
])
def test_same_padding_values(size, k, s, d, expected):
    pads = ref.resolve_padding("same", (size, 9), (k, 1), (s, 1), (d, 1))
    assert pads == expected + (0, 0)


@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("H, W", [(7, 8), (8, 7), (9, 10)])
@pytest.mark.parametrize("k, d", [(1, 1), (2, 1), (3, 1), (4, 1), (3, 2), (2, 3)])
def test_same_padding_output_size(s, H, W, k, d):
    x = np.zeros((1, 1, H, W))
    w = np.zeros((1, 1, k, k))
    expected = (-(-H // s), -(-W // s))
    assert ref.conv2d(x, w, stride=s, padding="same", dilation=d).shape[2:] == expected
    assert ref.conv2d_output_size(H, W, k, s, "Same", d) == expected
    if s == 1:
        assert expected == (H, W)


def test_same_padding_extra_goes_bottom_right(rng):
    x = rng.standard_normal((1, 2, 6, 5))
    w = rng.standard_normal((3, 2, 4, 2))
    # H: total 3 -> (1, 2); W: total 1 -> (0, 1)
    expected = naive_conv2d(np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1))), w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    np.testing.assert_allclose(ref.conv2d(x, w, padding="same"), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref.conv2d(x, w, padding=(1, 2, 0, 1)), expected, rtol=1e-12, atol=1e-12)
    assert ref.resolve_padding("VALID", (6, 5), (4, 2)) == (0, 0, 0, 0)


def test_output_size_helpers():
    assert ref.conv2d_output_size(7, 9, (3, 5), (2, 1), (1, 0), (1, 2)) == (4, 1)
    assert ref.conv_transpose2d_output_size(4, 5, 3, 2, 1, 1) == (8, 10)
    assert ref.conv_transpose2d_output_size(2, 2, 3) == (4, 4)
    assert ref.conv_transpose2d_output_size(3, 3, (3, 2), (1, 2), (0, 1), (0, 1), (2, 1)) == (7, 5)
    assert ref.pool2d_output_size(4, 4, 2, 2) == (2, 2)
    assert ref.pool2d_output_size(5, 5, 2, 2, 0, 1, False) == (2, 2)
    assert ref.pool2d_output_size(5, 5, 2, 2, 0, 1, True) == (3, 3)
    # ceil would give 4 but the 4th window would start in the right padding (6 >= 5 + 1)
    assert ref.pool2d_output_size(5, 5, 2, 2, 1, 1, True) == (3, 3)
    assert ref.pool2d_output_size(6, 6, 3, 2, 1, 1, True) == (4, 4)
    assert ref.pool2d_output_size(7, 7, 3, None, 1, 2, False) == (2, 2)


def test_invalid_shapes_raise():
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 6, 6)))  # kernel larger than input
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 3, 3)), dilation=3)  # dilated kernel 7 > 5
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 3, 3, 3)))  # channel mismatch
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((3, 2, 3, 3)), groups=2)  # K not divisible by groups
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 3, 3)), padding="full")
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 3, 3)), padding=-1)
    with pytest.raises(ValueError):
        ref.conv2d(x[0], np.zeros((2, 4, 3, 3)))  # not 4-D
    with pytest.raises(ValueError):
        ref.conv_transpose2d(x, np.zeros((4, 2, 3, 3)), stride=2, output_padding=2)
    with pytest.raises(ValueError):
        ref.conv_transpose2d(x, np.zeros((4, 2, 3, 3)), padding="same")
    with pytest.raises(ValueError):
        ref.conv_transpose2d(x, np.zeros((3, 2, 3, 3)))
    with pytest.raises(ValueError):
        ref.max_pool2d(x, 3, padding=2)  # padding > kernel // 2
    with pytest.raises(ValueError):
        ref.avg_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError):
        ref.max_pool2d(x, 6)
    with pytest.raises(ValueError):
        ref.depthwise_conv2d(x, np.zeros((6, 1, 3, 3)))  # 6 is not a multiple of 4
    with pytest.raises(ValueError):
        ref.conv2d_backward(np.zeros((1, 2, 4, 4)), x, np.zeros((2, 4, 3, 3)))  # wrong grad_out shape


# ---------------------------------------------------------------------------
# adjoint identity <conv2d(x, w), y> == <x, conv_transpose2d(y, w)>
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("C, K, H, W, k, s, p, d, g", [
    (1, 1, 4, 4, (3, 3), 1, 0, 1, 1),
    (3, 4, 7, 8, (3, 3), 2, 1, 1, 1),
    (4, 6, 9, 7, (3, 2), (2, 3), (1, 0), 2, 2),
    (4, 4, 8, 8, (2, 2), 3, 1, (2, 1), 4),
    (2, 3, 10, 9, (5, 3), (3, 2), (2, 1), (1, 3), 1),
])
def test_adjoint_identity(C, K, H, W, k, s, p, d, g, rng):
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    (sh, sw), (ph, pw), (dh, dw) = pair(s), pair(p), pair(d)
    x = rng.standard_normal((2, C, H, W))
    w = rng.standard_normal((K, C // g) + k)
    cx = ref.conv2d(x, w, None, s, p, d, g)
    # output_padding recovers the rows/cols that the strided conv never reaches
    op = ((H + 2 * ph - dh * (k[0] - 1) - 1) % sh, (W + 2 * pw - dw * (k[1] - 1) - 1) % sw)
    y = rng.standard_normal(cx.shape)
    ty = ref.conv_transpose2d(y, w, None, s, p, op, g, d)
    assert ty.shape == x.shape
    np.testing.assert_allclose(np.vdot(cx, y), np.vdot(x, ty), rtol=1e-11)


# ---------------------------------------------------------------------------
# every backward against central finite differences
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("C, K, H, W, k, s, p, d, g", [
    (2, 3, 5, 6, (3, 3), 1, 0, 1, 1),
    (4, 4, 7, 6, (3, 3), 2, 1, 1, 2),
    (2, 2, 7, 7, (3, 2), 1, (2, 1), 2, 1),
    (2, 4, 6, 5, (4, 2), 2, "same", 1, 2),
    (3, 2, 5, 6, (2, 3), (1, 2), (1, 0, 0, 2), (2, 1), 1),
])
def test_conv2d_backward_fd(C, K, H, W, k, s, p, d, g, rng):
    x = rng.standard_normal((2, C, H, W))
    w = rng.standard_normal((K, C // g) + k)
    b = rng.standard_normal(K)
    go = rng.standard_normal(ref.conv2d(x, w, b, s, p, d, g).shape)
    loss = lambda: np.vdot(ref.conv2d(x, w, b, s, p, d, g), go)
    gx, gw, gb = ref.conv2d_backward(go, x, w, s, p, d, g)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
    assert_fd(gx, loss, x)
    assert_fd(gw, loss, w)
    assert_fd(gb, loss, b)


def test_conv2d_grad_input_and_weight_split(rng):
    # stride 2: inputs of height 7 and 8 both give 3 output rows; row 7 of the 8-row input
    # is never read, so its gradient is zero
    w = rng.standard_normal((4, 1, 3, 3))
    go = rng.standard_normal((2, 4, 3, 3))
    g8 = ref.conv2d_grad_input(go, w, (8, 7), 2, 0, 1, 2)
    g7 = ref.conv2d_grad_input(go, w, (7, 7), 2, 0, 1, 2)
    assert g8.shape == (2, 2, 8, 7) and g7.shape == (2, 2, 7, 7)
    np.testing.assert_array_equal(g8[:, :, 7], 0.0)
    np.testing.assert_allclose(g8[:, :, :7], g7, rtol=1e-12, atol=1e-12)
    x = rng.standard_normal((2, 2, 8, 7))
    gx, gw, gb = ref.conv2d_backward(go, x, w, 2, 0, 1, 2)
    np.testing.assert_allclose(gx, g8, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref.conv2d_grad_weight(go, x, (3, 3), 2, 0, 1, 2), gw, rtol=1e-12, atol=1e-12)
    loss = lambda: np.vdot(ref.conv2d(x, w, None, 2, 0, 1, 2), go)
    assert_fd(ref.conv2d_grad_weight(go, x, (3, 3), 2, 0, 1, 2), loss, w)
    with pytest.raises(ValueError):
        ref.conv2d_grad_input(go, w, (9, 7), 2, 0, 1, 2)  # 9 rows give 4 output rows, not 3


def test_max_pool_backward_from_indices():
    # overlapping windows that share one argmax accumulate; index -1 contributes nothing
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 9.0
    y, idx = ref.max_pool2d(x, 2, 1, return_indices=True)
    np.testing.assert_array_equal(idx[0, 0], [[4, 4], [4, 4]])
    go = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    gx = ref.max_pool2d_backward_from_indices(go, idx, x.shape)
    expected = np.zeros((3, 3))
    expected[1, 1] = 10.0
    np.testing.assert_array_equal(gx[0, 0], expected)
    idx2 = np.array([[[[0, -1], [8, 0]]]])
    gx = ref.max_pool2d_backward_from_indices(go, idx2, x.shape)
    np.testing.assert_array_equal(gx[0, 0], [[5, 0, 0], [0, 0, 0], [0, 0, 3]])
    with pytest.raises(ValueError):
        ref.max_pool2d_backward_from_indices(go, np.full((1, 1, 2, 2), 9), x.shape)  # 9 >= H*W


@pytest.mark.parametrize("C, Kg, H, W, k, s, p, op, g, d", [
    (2, 3, 3, 4, (3, 3), 1, 0, 0, 1, 1),
    (2, 2, 3, 3, (3, 3), 2, 1, 1, 1, 1),
    (4, 2, 3, 4, (2, 3), (2, 3), (0, 1), (1, 2), 2, 1),
    (2, 2, 4, 3, (3, 2), 1, 1, (1, 0), 1, 2),
    (4, 1, 3, 3, (3, 3), 3, (2, 1), 2, 4, (1, 2)),
])
def test_conv_transpose2d_backward_fd(C, Kg, H, W, k, s, p, op, g, d, rng):
    x = rng.standard_normal((2, C, H, W))
    w = rng.standard_normal((C, Kg) + k)
    b = rng.standard_normal(Kg * g)
    y = ref.conv_transpose2d(x, w, b, s, p, op, g, d)
    go = rng.standard_normal(y.shape)
    loss = lambda: np.vdot(ref.conv_transpose2d(x, w, b, s, p, op, g, d), go)
    gx, gw, gb = ref.conv_transpose2d_backward(go, x, w, s, p, op, g, d)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
    assert_fd(gx, loss, x)
    assert_fd(gw, loss, w)
    assert_fd(gb, loss, b)


def test_conv_transpose2d_output_padding_rows(rng):
    # output_padding larger than padding: the extra last row/col only gets the bias
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((2, 3, 2, 2))
    b = rng.standard_normal(3)
    y = ref.conv_transpose2d(x, w, b, stride=2, padding=0, output_padding=1)
    assert y.shape == (1, 3, 7, 7)
    np.testing.assert_allclose(y[0, :, 6, :], np.broadcast_to(b[:, None], (3, 7)))
    np.testing.assert_allclose(y[0, :, :, 6], np.broadcast_to(b[:, None], (3, 7)))


@pytest.mark.parametrize("m, s, p, d", [(1, 1, 1, 1), (2, 2, "same", 1), (3, 1, (0, 2), 2)])
def test_depthwise_backward_fd(m, s, p, d, rng):
    C = 3
    x = rng.standard_normal((2, C, 6, 7))
    w = rng.standard_normal((C * m, 1, 3, 3))
    b = rng.standard_normal(C * m)
    y = ref.depthwise_conv2d(x, w, b, s, p, d)
    # forward: output channel c*m + j sees only input channel c
    pads = ref.resolve_padding(p, (6, 7), 3, s, d)
    naive = naive_conv2d(x, w, b, (s, s), pads, (d, d), C)
    np.testing.assert_allclose(y, naive, rtol=1e-12, atol=1e-12)
    go = rng.standard_normal(y.shape)
    loss = lambda: np.vdot(ref.depthwise_conv2d(x, w, b, s, p, d), go)
    gx, gw, gb = ref.depthwise_conv2d_backward(go, x, w, s, p, d)
    assert_fd(gx, loss, x)
    assert_fd(gw, loss, w)
    assert_fd(gb, loss, b)


@pytest.mark.parametrize("m, s, p, d", [(1, 1, 0, 1), (2, 2, "same", 1), (2, 1, 2, 2)])
def test_separable_backward_fd(m, s, p, d, rng):
    C, K = 3, 4
    x = rng.standard_normal((2, C, 6, 6))
    dw = rng.standard_normal((C * m, 1, 3, 3))
    pw = rng.standard_normal((K, C * m, 1, 1))
    b = rng.standard_normal(K)
    y = ref.separable_conv2d(x, dw, pw, b, s, p, d)
    # forward: depthwise (naive, groups=C) then a channel-mixing matrix product, then bias
    pads = ref.resolve_padding(p, (6, 6), 3, s, d)
    mid = naive_conv2d(x, dw, None, (s, s), pads, (d, d), C)
    expected = np.einsum("kc,nchw->nkhw", pw[:, :, 0, 0], mid) + b[:, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    go = rng.standard_normal(y.shape)
    loss = lambda: np.vdot(ref.separable_conv2d(x, dw, pw, b, s, p, d), go)
    gx, gdw, gpw, gb = ref.separable_conv2d_backward(go, x, dw, pw, s, p, d)
    assert gdw.shape == dw.shape and gpw.shape == pw.shape and gb.shape == (K,)
    assert_fd(gx, loss, x)
    assert_fd(gdw, loss, dw)
    assert_fd(gpw, loss, pw)
    assert_fd(gb, loss, b)


@pytest.mark.parametrize("k, s, p, d, ceil_mode", [
    (2, None, 0, 1, False),
    (3, 2, 1, 1, True),
    (3, 1, 1, 2, False),
    ((3, 2), (2, 1), (1, 1), 1, True),
    (2, 3, 1, (2, 1), True),
])
def test_max_pool_backward_fd(k, s, p, d, ceil_mode, rng):
    shape = (2, 2, 7, 6)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(float)  # distinct values
    y, idx = ref.max_pool2d(x, k, s, p, d, ceil_mode, return_indices=True)
    go = rng.standard_normal(y.shape)
    loss = lambda: np.vdot(ref.max_pool2d(x, k, s, p, d, ceil_mode), go)
    gx = ref.max_pool2d_backward(go, x, k, s, p, d, ceil_mode)
    assert_fd(gx, loss, x)
    np.testing.assert_array_equal(ref.max_pool2d_backward(go, x, k, s, p, d, ceil_mode, indices=idx), gx)


@pytest.mark.parametrize("k, s, p, ceil_mode, cip, div", [
    (2, None, 0, False, True, None),
    (3, 2, 1, True, True, None),
    (3, 2, 1, True, False, None),
    ((3, 2), (2, 1), (1, 0), False, False, None),
    (3, 2, 1, False, True, 5),
    (2, 3, 1, True, False, None),
])
def test_avg_pool_backward_fd(k, s, p, ceil_mode, cip, div, rng):
    x = rng.standard_normal((2, 2, 7, 6))
    y = ref.avg_pool2d(x, k, s, p, ceil_mode, cip, div)
    go = rng.standard_normal(y.shape)
    loss = lambda: np.vdot(ref.avg_pool2d(x, k, s, p, ceil_mode, cip, div), go)
    gx = ref.avg_pool2d_backward(go, x.shape, k, s, p, ceil_mode, cip, div)
    assert_fd(gx, loss, x)


def test_global_pool_backward_fd(rng):
    shape = (2, 3, 4, 5)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(float)
    go = rng.standard_normal((2, 3, 1, 1))
    assert_fd(ref.global_avg_pool2d_backward(go, shape), lambda: np.vdot(ref.global_avg_pool2d(x), go), x)
    gx = ref.global_max_pool2d_backward(go, x)
    assert_fd(gx, lambda: np.vdot(ref.global_max_pool2d(x), go), x)
    _, idx = ref.global_max_pool2d(x, return_indices=True)
    np.testing.assert_array_equal(ref.global_max_pool2d_backward(go, x, idx), gx)


# ---------------------------------------------------------------------------
# optional: torch.nn.functional as a second, independent implementation
# ---------------------------------------------------------------------------

def test_against_torch_if_installed(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def run(fn, *arrays, **kw):
        ts = [torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True) for a in arrays]
        out = fn(*ts, **kw)
        return out, ts

    def check(a, t):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-10, atol=1e-10)

    for s, p, d, g in [(1, 1, 1, 1), (2, (1, 0), (1, 2), 2), ((2, 3), 0, 2, 4)]:
        x, w, b = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((8, 4 // g, 3, 2)), rng.standard_normal(8)
        y, (xt, wt, bt) = run(lambda x_, w_, b_: F.conv2d(x_, w_, b_, s, p, d, g), x, w, b)
        check(ref.conv2d(x, w, b, s, p, d, g), y)
        go = rng.standard_normal(tuple(y.shape))
        y.backward(torch.from_numpy(go))
        for a, t in zip(ref.conv2d_backward(go, x, w, s, p, d, g), (xt, wt, bt)):
            check(a, t.grad)
    for s, p, op, g, d in [(2, 1, 1, 1, 1), ((2, 3), (0, 1), (1, 2), 2, 1), (1, 1, 1, 2, 2)]:
        x, w, b = rng.standard_normal((2, 4, 4, 5)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(3 * g)
        y, (xt, wt, bt) = run(lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, s, p, op, g, d), x, w, b)
        check(ref.conv_transpose2d(x, w, b, s, p, op, g, d), y)
        go = rng.standard_normal(tuple(y.shape))
        y.backward(torch.from_numpy(go))
        for a, t in zip(ref.conv_transpose2d_backward(go, x, w, s, p, op, g, d), (xt, wt, bt)):
            check(a, t.grad)
    for k, s, p, d, cm in [(3, 2, 1, 1, True), (2, 2, 1, 2, True), ((3, 2), 1, (1, 0), 2, False)]:
        x = rng.permutation(2 * 3 * 9 * 8).reshape(2, 3, 9, 8).astype(float)
        (y, it), (xt,) = run(lambda x_: F.max_pool2d(x_, k, s, p, d, cm, True), x)
        yr, ir = ref.max_pool2d(x, k, s, p, d, cm, True)
        check(yr, y)
        np.testing.assert_array_equal(ir, it.numpy())
        go = rng.standard_normal(tuple(y.shape))
        y.backward(torch.from_numpy(go))
        check(ref.max_pool2d_backward(go, x, k, s, p, d, cm), xt.grad)
    for k, s, p, cm, cip, div in [(3, 2, 1, True, True, None), (3, 2, 1, True, False, None),
                                  ((2, 3), (2, 1), (1, 1), True, True, None), (2, 3, 1, False, False, 3)]:
        x = rng.standard_normal((2, 3, 9, 8))
        y, (xt,) = run(lambda x_: F.avg_pool2d(x_, k, s, p, cm, cip, div), x)
        check(ref.avg_pool2d(x, k, s, p, cm, cip, div), y)
        go = rng.standard_normal(tuple(y.shape))
        y.backward(torch.from_numpy(go))
        check(ref.avg_pool2d_backward(go, x.shape, k, s, p, cm, cip, div), xt.grad)
