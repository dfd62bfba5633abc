"""conv2d and conv2d_backward through every registered CPU implementation, under every
available ISA, against the float64 reference on the shape grid of helpers.CONV_GRID (chosen
edges plus a seeded random sample)."""
import concurrent.futures

import numpy as np
import pytest

import convkit
from helpers import (CONV_GRID, DTYPES, ISAS, ConvCase, algo_fixture, assert_close, conv_inputs, conv_reference,
                     cpu_algos, dtype_id, forced_isa, param_fixture)

CASES = CONV_GRID
# dense, strided, depthwise, and a 1x1 with channel counts off the SIMD widths
THREAD_CASES = [ConvCase(2, 4, 10, 11, 5, 3, 3, 1, 1), ConvCase(2, 3, 11, 11, 4, 3, 3, 2, 1),
                ConvCase(1, 16, 13, 13, 16, 3, 3, 2, 1, 1, 16), ConvCase(1, 31, 2, 31, 33, 1, 1)]

forward_algo = algo_fixture("forward_algo", "conv2d_forward")
grad_input_algo = algo_fixture("grad_input_algo", "conv2d_grad_input")
grad_weight_algo = algo_fixture("grad_weight_algo", "conv2d_grad_weight")

case = param_fixture("case", CASES, ids=str)
dtype = param_fixture("dtype", DTYPES, ids=dtype_id)


def test_forward(forward_algo, case, dtype):
    x, w, b, _ = conv_inputs(case, dtype)
    y_ref = conv_reference(case, dtype)[0]
    assert_close(convkit.conv2d(x, w, **case.kwargs, algo=forward_algo), y_ref, dtype)
    # bias and ReLU are the kernel's epilogue: check them together
    fused = np.maximum(y_ref + b.astype(np.float64).reshape(-1, 1, 1), 0.0)
    assert_close(convkit.conv2d(x, w, b, **case.kwargs, activation="relu", algo=forward_algo), fused, dtype)


def test_grad_input(grad_input_algo, case, dtype):
    x, w, _, gy = conv_inputs(case, dtype)
    gx, gw, gb = convkit.conv2d_backward(gy, x, w, **case.kwargs, need_weight=False, need_bias=False,
                                         algo=grad_input_algo)
    assert gw is None and gb is None
    assert_close(gx, conv_reference(case, dtype)[1], dtype)


def test_grad_weight_and_bias(grad_weight_algo, case, dtype):
    x, w, _, gy = conv_inputs(case, dtype)
    gx, gw, gb = convkit.conv2d_backward(gy, x, w, **case.kwargs, need_input=False, algo=grad_weight_algo)
    assert gx is None
    _, _, gw_ref, gb_ref = conv_reference(case, dtype)
    assert_close(gw, gw_ref, dtype)
    assert_close(gb, gb_ref, dtype)


@pytest.mark.parametrize("algo", cpu_algos("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight"))
def test_backward_default_returns_all_three(algo):
    case = THREAD_CASES[1]
    x, w, _, gy = conv_inputs(case, np.float64)
    got = convkit.conv2d_backward(gy, x, w, **case.kwargs, algo=algo)
    for g, g_ref in zip(got, conv_reference(case, np.float64)[1:]):
        assert_close(g, g_ref, np.float64)
    assert convkit.conv2d_backward(gy, x, w, **case.kwargs, need_input=False, need_weight=False,
                                   need_bias=False, algo=algo) == (None, None, None)


@pytest.mark.parametrize("algo", cpu_algos("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight"))
def test_empty_batch(algo):
    """N == 0 is a valid (empty) call: empty outputs and input gradients, zero weight and
    bias gradients."""
    x, w, gy = np.zeros((0, 4, 6, 5)), np.ones((6, 2, 3, 3)), np.zeros((0, 6, 2, 2))
    assert convkit.conv2d(x, w, np.ones(6), stride=2, groups=2, algo=algo).shape == (0, 6, 2, 2)
    gx, gw, gb = convkit.conv2d_backward(gy, x, w, stride=2, groups=2, algo=algo)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros_like(w))
    np.testing.assert_array_equal(gb, np.zeros(6))


def _out_size(n, k, s, p_before, p_after, d):
    return (n + p_before + p_after - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("case", CASES, ids=str)
def test_output_shape_formula(case):
    """DESIGN.md's formulas, written out here independently of convkit._args."""
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    (sh, sw), (dh, dw) = pair(case.stride), pair(case.dilation)
    if isinstance(case.padding, str) and case.padding.lower() == "same":
        want = (-(-case.H // sh), -(-case.W // sw))  # ceil(input / stride), any stride
    else:
        p = (0, 0) if isinstance(case.padding, str) else pair(case.padding)
        pads = p if len(p) == 4 else (p[0], p[0], p[1], p[1])
        want = (_out_size(case.H, case.kh, sh, pads[0], pads[1], dh),
                _out_size(case.W, case.kw, sw, pads[2], pads[3], dw))
    assert conv_reference(case, np.float64)[0].shape == (case.N, case.K, *want)


@pytest.mark.parametrize("H, k, s, d, pads", [
    (9, 3, 1, 1, (1, 1)), (9, 4, 1, 1, (1, 2)), (11, 3, 2, 1, (1, 1)), (10, 3, 2, 1, (0, 1)),
    (11, 3, 3, 2, (1, 2)), (1, 5, 2, 1, (2, 2)), (8, 2, 2, 1, (0, 0)),
])
def test_same_padding_puts_the_odd_pixel_bottom_right(H, k, s, d, pads):
    """'same' (TensorFlow's rule) equals the explicit asymmetric padding, for any stride."""
    rng = np.random.default_rng(H * 100 + k * 10 + s)
    x = rng.standard_normal((1, 2, H, H))
    w = rng.standard_normal((3, 2, k, k))
    explicit = convkit.reference.conv2d(x, w, None, s, (*pads, *pads), d)
    assert_close(convkit.conv2d(x, w, None, s, "same", d), explicit, np.float64)


@pytest.mark.parametrize("case", THREAD_CASES, ids=str)
@pytest.mark.parametrize("algo", [a for a in cpu_algos("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")
                                  if a != "reference"])
def test_results_do_not_depend_on_thread_count(algo, case):
    """Work is split by task index, never by thread: bit-identical for 1, 2 and 3 threads."""
    x, w, b, gy = conv_inputs(case, np.float32)
    before = convkit.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            convkit.set_num_threads(n)
            results.append((convkit.conv2d(x, w, b, **case.kwargs, algo=algo),
                            *convkit.conv2d_backward(gy, x, w, **case.kwargs, algo=algo)))
    finally:
        convkit.set_num_threads(before)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("algo", [a for a in cpu_algos("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")
                                  if a != "reference"])
def test_concurrent_calls_from_python_threads(algo):
    """The GIL is released around the kernels and the pool serves one job at a time (the
    others run serially in their caller): calls from several Python threads at once all
    get their own, correct results."""
    cases = (THREAD_CASES + [ConvCase(1, 6, 7, 8, 6, 3, 3, 2, 1, 1, 3), ConvCase(1, 17, 3, 17, 15, 3, 3, 1, 1)]) * 4

    def run(case):
        x, w, b, gy = conv_inputs(case, np.float64)
        return (convkit.conv2d(x, w, **case.kwargs, algo=algo),
                *convkit.conv2d_backward(gy, x, w, **case.kwargs, need_bias=False, algo=algo)[:2])

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, cases))
    for case, got in zip(cases, results):
        for g, r in zip(got, conv_reference(case, np.float64)[:3]):
            assert_close(g, r, np.float64)


def test_isa_fixture_covers_the_detected_isa():
    assert ISAS[0] == "scalar" and convkit.get_isa() == ISAS[-1]
    with forced_isa("scalar"):
        assert convkit.get_isa() == "scalar"
    assert convkit.get_isa() == ISAS[-1]
