"""depthwise_conv2d and separable_conv2d (forward, backward) through every registered CPU
implementation against the reference; DESIGN.md's parameter counts."""
import zlib
from functools import lru_cache

import numpy as np

import convkit
from convkit import reference as ref
from helpers import DTYPES, algo_fixture, assert_close, dtype_id, param_fixture

forward_algo = algo_fixture("forward_algo", "conv2d_forward")
backward_algo = algo_fixture("backward_algo", "conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")

# (N, C, H, W, multiplier, kh, kw, stride, padding, dilation, K of the separable's pointwise)
CASES = [
    (1, 3, 8, 9, 1, 3, 3, 1, 1, 1, 4),
    (2, 4, 7, 7, 2, 3, 3, 2, 1, 1, 5),
    (1, 5, 9, 8, 3, 5, 5, 1, "same", 1, 2),
    (1, 6, 10, 11, 1, 3, 3, 1, "same", 2, 8),
    (1, 3, 9, 9, 2, 7, 7, 2, 3, 1, 3),
    (1, 4, 8, 6, 1, 1, 3, (1, 2), (0, 1), 1, 4),         # non-square kernel and stride
    (1, 2, 11, 7, 1, 2, 4, 3, "same", (2, 1), 3),
    (1, 3, 1, 1, 2, 3, 3, 1, 1, 1, 2),                   # 1x1 image
    (1, 3, 2, 3, 1, 5, 5, 1, 2, 1, 2),                   # kernel larger than the image, padded
    (1, 8, 5, 16, 1, 3, 3, 1, 1, 1, 16),                 # channels at / around the SIMD widths
    (1, 15, 4, 17, 1, 3, 3, 1, 1, 1, 7),
    (1, 16, 4, 15, 2, 3, 3, 2, 1, 1, 32),
    (1, 17, 3, 9, 1, 5, 5, 1, 2, 1, 9),
    (1, 32, 3, 8, 1, 3, 3, 1, "valid", 1, 33),
    (2, 1, 6, 6, 3, 3, 3, 1, 1, 1, 2),                   # one channel: groups == 1 with a multiplier
]


def _id(case):
    return "n{}c{}h{}w{}-m{}-f{}x{}-s{}-p{}-d{}-k{}".format(*case).replace(" ", "")


def _kwargs(case):
    return dict(stride=case[7], padding=case[8], dilation=case[9])


@lru_cache(maxsize=None)
def _inputs(case, dtype):
    """x, depthwise w, pointwise w, bias (K), depthwise bias (C*m), grad of the depthwise
    output, grad of the separable output; read-only."""
    N, C, H, W, m, kh, kw = case[:7]
    K = case[10]
    rng = np.random.default_rng(zlib.crc32(_id(case).encode()))
    OH, OW = ref.conv2d_output_size(H, W, (kh, kw), case[7], case[8], case[9])
    shapes = [(N, C, H, W), (C * m, 1, kh, kw), (K, C * m, 1, 1), (K,), (C * m,), (N, C * m, OH, OW), (N, K, OH, OW)]
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    for a in arrays:
        a.flags.writeable = False
    return arrays


case = param_fixture("case", CASES, ids=_id)
dtype = param_fixture("dtype", DTYPES, ids=dtype_id)


def test_depthwise_forward(forward_algo, case, dtype):
    x, dw, _, _, db, _, _ = _inputs(case, dtype)
    kw = _kwargs(case)
    y_ref = ref.depthwise_conv2d(x, dw, db, **kw)
    assert_close(convkit.depthwise_conv2d(x, dw, db, **kw, algo=forward_algo), y_ref, dtype)
    assert_close(convkit.depthwise_conv2d(x, dw, None, **kw, activation="relu", algo=forward_algo),
                 np.maximum(ref.depthwise_conv2d(x, dw, None, **kw), 0), dtype)
    # it is conv2d with groups == C
    assert_close(convkit.conv2d(x, dw, db, **kw, groups=case[1], algo=forward_algo), y_ref, dtype)


def test_depthwise_backward(backward_algo, case, dtype):
    x, dw, _, _, _, gy, _ = _inputs(case, dtype)
    kw = _kwargs(case)
    got = convkit.depthwise_conv2d_backward(gy, x, dw, **kw, algo=backward_algo)
    for g, r in zip(got, ref.depthwise_conv2d_backward(gy, x, dw, **kw), strict=True):
        assert_close(g, r, dtype)
    gx, gw, gb = convkit.depthwise_conv2d_backward(gy, x, dw, **kw, need_input=False, need_weight=False,
                                                   algo=backward_algo)
    assert gx is None and gw is None and gb.shape == (dw.shape[0],)


def test_separable_forward(forward_algo, case, dtype):
    x, dw, pw, b, _, _, _ = _inputs(case, dtype)
    kw = _kwargs(case)
    y_ref = ref.separable_conv2d(x, dw, pw, b, **kw)
    assert_close(convkit.separable_conv2d(x, dw, pw, b, **kw, algo=forward_algo), y_ref, dtype)
    assert_close(convkit.separable_conv2d(x, dw, pw, b, **kw, activation="relu", algo=forward_algo),
                 np.maximum(y_ref, 0), dtype)


def test_separable_backward(backward_algo, case, dtype):
    x, dw, pw, _, _, _, gy = _inputs(case, dtype)
    kw = _kwargs(case)
    got = convkit.separable_conv2d_backward(gy, x, dw, pw, **kw, algo=backward_algo)
    for g, r in zip(got, ref.separable_conv2d_backward(gy, x, dw, pw, **kw), strict=True):
        assert_close(g, r, dtype)


def test_separable_parameter_count():
    """DESIGN.md: 16 input channels, 3x3 depthwise then 32 pointwise: 16*3*3 + 32*16
    parameters, against 16*32*3*3 for the dense 3x3 conv with the same output."""
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8))
    dw, pw = np.ones((16, 1, 3, 3)), np.ones((32, 16, 1, 1))
    assert dw.size + pw.size == 16 * 3 * 3 + 32 * 16 == 656
    y = convkit.separable_conv2d(x, dw, pw, padding="same")
    assert y.shape == (1, 32, 8, 8)
    # with these all-ones weights it equals the dense conv whose weight is their product
    dense = np.ones((32, 16, 3, 3))
    assert dense.size == 16 * 32 * 3 * 3 == 4608
    assert_close(y, convkit.conv2d(x, dense, padding="same"), np.float64)
