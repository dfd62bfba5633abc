"""conv_transpose2d and its backward through every registered CPU implementation against
the reference; the adjoint identity with conv2d; the output-shape formula."""
import zlib
from functools import lru_cache

import numpy as np
import pytest

import convkit
from convkit import reference as ref
from helpers import CONV_CASES, DTYPES, algo_fixture, assert_close, conv_inputs, dtype_id, param_fixture

# conv_transpose2d runs conv2d's grad-input; its backward runs conv2d forward and grad-weight
forward_algo = algo_fixture("forward_algo", "conv2d_grad_input")
backward_algo = algo_fixture("backward_algo", "conv2d_forward", "conv2d_grad_weight")
adjoint_algo = algo_fixture("adjoint_algo", "conv2d_forward", "conv2d_grad_input")
conv_algo = algo_fixture("conv_algo", "conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")

# (N, C, H, W, K, kh, kw, stride, padding, output_padding, groups, dilation): weight (C, K/groups, kh, kw)
CASES = [
    (1, 3, 4, 4, 2, 3, 3, 1, 0, 0, 1, 1),
    (2, 3, 5, 4, 4, 3, 3, 2, 1, 1, 1, 1),
    (1, 2, 3, 5, 3, 4, 4, 2, 1, 0, 1, 1),              # DCGAN's 4x4, stride 2, padding 1
    (1, 2, 4, 3, 3, 5, 5, 3, 2, 2, 1, 1),
    (1, 2, 3, 3, 2, 3, 3, (2, 3), (1, 0), (1, 2), 1, 1),
    (1, 4, 3, 4, 6, 3, 3, 2, 1, 1, 2, 1),              # groups
    (1, 6, 4, 4, 6, 3, 3, 1, 1, 0, 6, 1),              # depthwise
    (1, 6, 5, 5, 12, 3, 3, 2, 1, 1, 6, 1),             # depthwise, multiplier 2
    (1, 3, 5, 5, 2, 3, 3, 1, 2, 1, 1, 2),              # output_padding >= stride (dilation > stride)
    (1, 2, 4, 4, 3, 3, 3, 1, 0, 2, 1, 3),
    (1, 2, 3, 4, 2, 2, 3, 2, 0, 2, 1, 3),
    (2, 3, 4, 5, 2, 3, 2, (1, 2), (1, 0), (1, 1), 1, 2),
    (1, 6, 3, 3, 4, 3, 3, 2, 1, 1, 2, 2),
    (1, 4, 3, 3, 6, 3, 3, 1, 1, 1, 2, 2),              # groups and output_padding >= stride
    (1, 2, 1, 1, 3, 3, 3, 1, 0, 0, 1, 1),              # 1x1 input
    (1, 2, 1, 1, 3, 4, 4, 2, 1, 1, 1, 1),
    (1, 3, 2, 7, 4, 1, 1, 2, 0, 1, 1, 1),              # 1x1 kernel
    (1, 16, 3, 5, 16, 3, 3, 2, 1, 1, 1, 1),            # channel counts at / around the SIMD widths
    (1, 9, 4, 4, 17, 3, 3, 1, 1, 0, 1, 1),
    (1, 8, 3, 15, 33, 2, 2, 2, 0, 0, 1, 1),
    (1, 4, 5, 5, 4, 7, 7, 1, 3, 0, 1, 1),
    (1, 2, 2, 2, 2, 3, 3, 1, 1, 0, 1, 1),              # padding crops most of the output
    (3, 2, 3, 3, 2, 2, 2, 2, 0, 0, 1, 1),
]


def _id(case):
    return "n{}c{}h{}w{}-k{}f{}x{}-s{}-p{}-op{}-g{}-d{}".format(*case).replace(" ", "")


def _kwargs(case):
    stride, padding, output_padding, groups, dilation = case[7:]
    return dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)


@lru_cache(maxsize=None)
def _inputs(case, dtype):
    """x, w, b, grad_y of a case (read-only) and the float64 reference forward and backward."""
    N, C, H, W, K, kh, kw = case[:7]
    rng = np.random.default_rng(zlib.crc32(_id(case).encode()))
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C, K // case[10], kh, kw)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    y = ref.conv_transpose2d(x, w, b, **_kwargs(case))
    gy = rng.standard_normal(y.shape).astype(dtype)
    arrays = (x, w, b, gy, y, *ref.conv_transpose2d_backward(gy, x, w, **_kwargs(case)))
    for a in arrays:
        a.flags.writeable = False
    return arrays


case = param_fixture("case", CASES, ids=_id)
dtype = param_fixture("dtype", DTYPES, ids=dtype_id)


def test_forward(forward_algo, case, dtype):
    x, w, b, _, y_ref = _inputs(case, dtype)[:5]
    assert_close(convkit.conv_transpose2d(x, w, b, **_kwargs(case), algo=forward_algo), y_ref, dtype)


def test_backward(backward_algo, case, dtype):
    x, w, _, gy, _, *grads_ref = _inputs(case, dtype)
    kw = _kwargs(case)
    got = convkit.conv_transpose2d_backward(gy, x, w, **kw, algo=backward_algo)
    for g, r in zip(got, grads_ref, strict=True):
        assert_close(g, r, dtype)
    gx, gw, gb = convkit.conv_transpose2d_backward(gy, x, w, **kw, need_input=False, need_bias=False,
                                                   algo=backward_algo)
    assert gx is None and gb is None and gw.shape == w.shape


def test_nhwc(conv_algo, case):
    """NHWC through forward and backward, including the zero rows/columns that
    output_padding >= stride adds and crops (laid out per layout)."""
    x, w, b, gy, y_ref, *grads_ref = _inputs(case, np.float64)
    kw = dict(_kwargs(case), layout="NHWC", algo=conv_algo)
    nhwc = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    assert_close(convkit.conv_transpose2d(nhwc(x), w, b, **kw), nhwc(y_ref), np.float64)
    got = convkit.conv_transpose2d_backward(nhwc(gy), nhwc(x), w, **kw)
    for g, r in zip(got, [nhwc(grads_ref[0]), *grads_ref[1:]], strict=True):
        assert_close(g, r, np.float64)


@pytest.mark.parametrize("case", [c for c in CONV_CASES if not isinstance(c.padding, str) and
                                  not (isinstance(c.padding, tuple) and len(c.padding) == 4)], ids=str)
def test_adjoint_of_conv2d(adjoint_algo, case):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> with the output_padding that
    brings conv_transpose2d back to x's size, to float64 precision."""
    x, w, _, y = (a.astype(np.float64) for a in conv_inputs(case, np.float64))
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(case.stride), pair(case.padding), pair(case.dilation)
    output_padding = ((case.H + 2 * ph - dh * (case.kh - 1) - 1) % sh, (case.W + 2 * pw - dw * (case.kw - 1) - 1) % sw)
    conv_xw = convkit.conv2d(x, w, **case.kwargs, algo=adjoint_algo)
    transposed = convkit.conv_transpose2d(y, w, None, case.stride, case.padding, output_padding, case.groups,
                                          case.dilation, algo=adjoint_algo)
    assert transposed.shape == x.shape
    # the scale of the terms: the same sums with every sign made positive
    scale = np.vdot(ref.conv2d(np.abs(x), np.abs(w), None, **case.kwargs), np.abs(y))
    assert abs(np.vdot(conv_xw, y) - np.vdot(x, transposed)) <= 1e-12 * scale


@pytest.mark.parametrize("H, W, C, K, k, stride, padding, dilation, groups", [
    (4, 4, 1, 1, 3, 1, 0, 1, 1),  # DESIGN.md: R^16 (4x4) -> R^4 (2x2) and back
    (5, 6, 2, 3, 3, 2, 1, 1, 1),
    (7, 5, 4, 2, 2, 3, 0, 2, 2),
])
def test_is_the_matrix_transpose_of_conv2d(adjoint_algo, H, W, C, K, k, stride, padding, dilation, groups):
    """conv2d is a linear map M: R^(C*H*W) -> R^(K*OH*OW); conv_transpose2d with the same
    weight is exactly M^T. Both matrices are built column by column from basis vectors."""
    w = np.random.default_rng(H * W).standard_normal((K, C // groups, k, k))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    n_in = C * H * W
    M = convkit.conv2d(np.eye(n_in).reshape(n_in, C, H, W), w, **kw, algo=adjoint_algo).reshape(n_in, -1).T
    OH, OW = ref.conv2d_output_size(H, W, k, stride, padding, dilation)
    n_out = K * OH * OW
    op = tuple((n + 2 * padding - dilation * (k - 1) - 1) % stride for n in (H, W))
    Mt = convkit.conv_transpose2d(np.eye(n_out).reshape(n_out, K, OH, OW), w, None, stride, padding, op, groups,
                                  dilation, algo=adjoint_algo).reshape(n_out, -1).T
    assert M.shape == (n_out, n_in) and Mt.shape == (n_in, n_out)  # 4 x 16 and 16 x 4 for the first
    np.testing.assert_allclose(Mt, M.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("H, k, s, p, op, d", [
    (4, 3, 1, 0, 0, 1), (4, 3, 2, 1, 1, 1), (3, 4, 2, 1, 0, 1), (5, 5, 3, 2, 2, 1), (1, 1, 1, 0, 0, 1),
    (1, 3, 3, 1, 2, 1), (6, 3, 1, 2, 1, 2), (4, 3, 1, 0, 2, 3), (7, 2, 2, 0, 2, 3), (2, 7, 1, 3, 0, 1),
    (16, 4, 2, 1, 0, 1), (32, 3, 2, 1, 1, 1),
])
def test_output_shape_formula(H, k, s, p, op, d):
    """(H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1, per dimension."""
    x = np.zeros((1, 2, H, H + 1))
    w = np.zeros((2, 3, k, k))
    y = convkit.conv_transpose2d(x, w, None, s, p, op, 1, d)
    out = lambda n: (n - 1) * s - 2 * p + d * (k - 1) + op + 1  # noqa: E731
    assert y.shape == (1, 3, out(H), out(H + 1))
    assert ref.conv_transpose2d_output_size(H, H + 1, k, s, p, op, d) == y.shape[2:]
