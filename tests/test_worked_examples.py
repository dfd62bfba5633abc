"""DESIGN.md's worked examples (the course notes' numbers) through every registered CPU
conv implementation, under every available ISA, in float32 and float64."""
import numpy as np
import pytest
import scipy.signal

import convkit
from helpers import DTYPES, algo_fixture, assert_close, dtype_id, param_fixture

forward_algo = algo_fixture("forward_algo", "conv2d_forward")
backward_algo = algo_fixture("backward_algo", "conv2d_grad_input", "conv2d_grad_weight")

dtype = param_fixture("dtype", DTYPES, ids=dtype_id)


def correlate(image, kernels, algo, dtype, stride=1):
    """One image (H, W) against kernels (K, kh, kw) -> (K, OH, OW), valid padding."""
    x = np.asarray(image, dtype)[None, None]
    w = np.asarray(kernels, dtype)[:, None]
    y = convkit.conv2d(x, w, stride=stride, padding="valid", algo=algo)
    assert y.dtype == dtype
    return y[0]


IMAGE_5 = [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
X_KERNEL = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]

IMAGE_6 = [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0],
           [0, 0, 1, 0, 1, 0]]
DIAGONAL = [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
VERTICAL = [[-1, 1, -1], [-1, 1, -1], [-1, 1, -1]]
DIAGONAL_OUT = [[3, -1, -3, -1], [-3, 1, 0, -3], [-3, -3, 0, 1], [3, -2, -2, -1]]
VERTICAL_OUT = [[-1, -1, -1, -1], [-1, -1, -2, 1], [-1, -1, -2, 1], [-1, 0, -4, 3]]


# Integer data: every partial sum is exact in float32 too, so the results are exact.
# (Winograd, whose transforms scale by 1/6 and 1/24, is not in these fixtures: it covers
# only some shapes, and tests/test_winograd.py runs it on the shared grid.)


def test_5x5_image(forward_algo, dtype):
    np.testing.assert_array_equal(correlate(IMAGE_5, [X_KERNEL], forward_algo, dtype)[0],
                                  [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


@pytest.mark.parametrize("kernel, expected", [(DIAGONAL, DIAGONAL_OUT), (VERTICAL, VERTICAL_OUT)],
                         ids=["diagonal", "vertical"])
def test_6x6_image(forward_algo, dtype, kernel, expected):
    np.testing.assert_array_equal(correlate(IMAGE_6, [kernel], forward_algo, dtype)[0], expected)


def test_6x6_image_stride_2(forward_algo, dtype):
    np.testing.assert_array_equal(correlate(IMAGE_6, [DIAGONAL], forward_algo, dtype, stride=2)[0],
                                  [[3, -3], [-3, 0]])


def test_both_filters_stacked_as_two_output_channels(forward_algo, dtype):
    y = correlate(IMAGE_6, [DIAGONAL, VERTICAL], forward_algo, dtype)
    assert y.shape == (2, 4, 4)
    np.testing.assert_array_equal(y, [DIAGONAL_OUT, VERTICAL_OUT])


def test_sobel_512_matches_scipy(forward_algo, dtype):
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)
    image = np.random.default_rng(512).random((512, 512)).astype(dtype)
    y = correlate(image, [sobel], forward_algo, dtype)[0]
    assert y.shape == (510, 510)
    assert_close(y, scipy.signal.correlate2d(image.astype(np.float64), sobel, "valid"), dtype)


def test_sizes_and_parameter_count():
    x = np.zeros((1, 3, 7, 7))
    assert convkit.conv2d(x[:, :1], np.zeros((1, 1, 3, 3))).shape == (1, 1, 5, 5)  # 7x7, 3x3 -> 5x5
    assert convkit.conv2d(x[:, :1], np.zeros((1, 1, 3, 3)), padding=1).shape == (1, 1, 7, 7)
    w, b = np.zeros((5, 3, 3, 3)), np.zeros(5)  # 5 filters of 3x3x3 on 7x7x3 -> 5x5x5
    assert convkit.conv2d(x, w, b).shape == (1, 5, 5, 5)
    assert w.size + b.size == 140


def test_backprop_example(backward_algo, dtype):
    """3x3 input, 2x2 kernel, padding 1, stride 1 -> 4x4 output. dL/dw is the correlation
    of the (padded) input with dL/dz; dL/dx is the full convolution of dL/dz with the
    kernel (the correlation with the flipped kernel), cropped to the input."""
    x = np.array([[1, 2, -1], [0, 3, 1], [-2, 1, 2]], dtype)
    w = np.array([[2, -1], [1, 3]], dtype)
    dz = np.array([[1, 0, -1, 2], [2, 1, 0, -1], [0, -2, 1, 1], [1, 1, -1, 0]], dtype)
    assert convkit.conv2d(x[None, None], w[None, None], padding=1, algo=backward_algo).shape == (1, 1, 4, 4)
    gx, gw, gb = convkit.conv2d_backward(dz[None, None], x[None, None], w[None, None], padding=1, algo=backward_algo)
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    np.testing.assert_array_equal(gw[0, 0], scipy.signal.correlate2d(np.pad(f64(x), 1), f64(dz), "valid"))
    np.testing.assert_array_equal(gx[0, 0], scipy.signal.convolve2d(f64(dz), f64(w), "full")[1:4, 1:4])
    np.testing.assert_array_equal(gx[0, 0], scipy.signal.correlate2d(f64(dz), f64(w)[::-1, ::-1], "full")[1:4, 1:4])
    assert gb.dtype == dtype and gb[0] == dz.sum()
