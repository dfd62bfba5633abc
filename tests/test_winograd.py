"""algo="winograd" (F(4x4, 3x3), float32, groups 1; 3x3 at stride 1, and strided kernels
of at most 3 taps per stride phase) against the reference: forward, grad-input, and
grad-weight (F(3x3, 4x4) on the forward's tiles).

The grid hits the tile edges (sizes below, at and above multiples of the 4x4 output tile,
1x1 images), paddings 0/1/2/asymmetric/"same" and larger than the kernel's reach,
dilations 1..3 (a 4x4 tile per dilation sub-grid), channel counts around the vector
widths, batches, both layouts, every ISA; strides 2-4 with kernels up to 3x the stride
(zero taps in phase space), sizes that are not multiples of the stride, paddings that
are or are not multiples of it, conv_transpose2d with output_padding; also every GEMM
and grad-weight kernel of the active ISA, several super-blocks of tiles, and the calls
it refuses.
"""
import numpy as np
import pytest

import convkit
from convkit import _cpu, reference as ref
from convkit._args import conv_geometry
from convkit._impl_winograd import covers
from convkit._registry import NotCovered
from helpers import CONV_GRID, ISAS, assert_close, conv_inputs, conv_reference, forced_isa

F32 = np.float32

# (N, C, H, W, K, padding, dilation)
CASES = [
    (1, 1, 1, 1, 1, 1, 1),               # 1x1 image: one tile, one valid output
    (1, 3, 4, 4, 2, 1, 1),               # exactly one tile
    (2, 5, 7, 9, 3, 1, 1),               # tiles cut at the bottom and the right
    (1, 16, 8, 8, 16, 0, 1),             # channels at the AVX-512 width, no padding
    (1, 17, 13, 6, 33, (0, 2, 1, 0), 1),  # asymmetric padding, channels past the widths
    (1, 9, 11, 10, 7, "same", 2),        # "same" with dilation: 2x2 sub-grids
    (3, 8, 5, 12, 24, 2, 3),             # dilation 3: sub-grids of 2 rows
    (1, 4, 3, 3, 5, 4, 1),               # padding past the kernel's reach (grad-input crops)
    (1, 2, 2, 7, 3, (3, 0, 0, 3), 2),
    (2, 31, 17, 19, 15, 1, 1),
]


def _case_id(c):
    return "n{}c{}h{}w{}k{}-p{}-d{}".format(*c).replace(" ", "")


def _data(case, seed=0):
    N, C, H, W, K, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(F32)
    w = rng.uniform(-1, 1, (K, C, 3, 3)).astype(F32)
    b = rng.uniform(-1, 1, K).astype(F32)
    y64 = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, 1, padding, dilation)
    gy = rng.uniform(-1, 1, y64.shape).astype(F32)
    return x, w, b, gy, y64


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw(a):
    return a.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_and_gradients_match_reference(case, layout, isa):
    N, C, H, W, K, padding, dilation = case
    x, w, b, gy, y64 = _data(case)
    fused = np.maximum(y64 + b.astype(np.float64).reshape(-1, 1, 1), 0.0)
    gx64 = ref.conv2d_grad_input(gy.astype(np.float64), w.astype(np.float64), (H, W), 1, padding, dilation, 1)
    gw64 = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), (3, 3), 1, padding, dilation, 1)
    to, back = (_nhwc, _nchw) if layout == "NHWC" else (lambda a: a, lambda a: a)
    with forced_isa(isa):
        y = convkit.conv2d(to(x), w, None, 1, padding, dilation, layout=layout, algo="winograd")
        y_fused = convkit.conv2d(to(x), w, b, 1, padding, dilation, activation="relu", layout=layout,
                                 algo="winograd")
        gx, gw, _ = convkit.conv2d_backward(to(gy), to(x), w, 1, padding, dilation, need_bias=False,
                                            layout=layout, algo="winograd")
    assert_close(back(y), y64, F32)
    assert_close(back(y_fused), fused, F32)
    assert_close(back(gx), gx64, F32)
    assert_close(gw, gw64, F32)


def _covered(case):
    geom = conv_geometry((case.N, case.C, case.H, case.W), (case.K, case.C // case.groups, case.kh, case.kw),
                         case.stride, case.padding, case.dilation, case.groups)
    return covers(geom, F32) is None


# Strided: (N, C, H, W, K, kernel, stride, padding)
STRIDED = [
    (1, 3, 27, 27, 8, (11, 11), 4, 0),        # AlexNet's conv1 in small: 48 phase channels
    (2, 5, 13, 12, 7, (4, 4), 2, 1),          # DCGAN's 4x4 stride 2: odd padding, 3 phase taps
    (1, 4, 9, 10, 3, (5, 5), 2, 2),           # sizes not multiples of the stride
    (1, 3, 14, 15, 17, (3, 3), 2, 1),         # 2 phase taps, zero-padded to 3
    (1, 2, 11, 9, 5, (6, 4), (3, 2), (1, 0)),  # per-axis strides and kernels
    (2, 6, 8, 7, 16, (2, 3), (2, 1), (0, 1)),  # stride 1 on one axis only
    (1, 1, 1, 1, 2, (2, 2), 2, 1),            # 1x1 image, padding past the reach
    (1, 256, 13, 14, 1, (12, 12), 4, 0),      # one output channel, 4096 phase channels of grad-input
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", STRIDED, ids=str)
def test_strided_forward_and_gradients_match_reference(case, layout, isa):
    N, C, H, W, K, kernel, stride, padding = case
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(F32)
    w = rng.uniform(-1, 1, (K, C, *kernel)).astype(F32)
    b = rng.uniform(-1, 1, K).astype(F32)
    y64 = ref.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, padding)
    gy = rng.uniform(-1, 1, y64.shape).astype(F32)
    gx64 = ref.conv2d_grad_input(gy.astype(np.float64), w.astype(np.float64), (H, W), stride, padding, 1, 1)
    gw64 = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), kernel, stride, padding, 1, 1)
    to, back = (_nhwc, _nchw) if layout == "NHWC" else (lambda a: a, lambda a: a)
    with forced_isa(isa):
        y = convkit.conv2d(to(x), w, b, stride, padding, activation="relu", layout=layout, algo="winograd")
        gx, gw, _ = convkit.conv2d_backward(to(gy), to(x), w, stride, padding, need_bias=False, layout=layout,
                                            algo="winograd")
    assert_close(back(y), np.maximum(y64, 0.0), F32)
    assert_close(back(gx), gx64, F32)
    assert_close(gw, gw64, F32)


@pytest.mark.parametrize("case", [((8, 6, 5, 5), (6, 4, 4, 4), 2, 1, 0), ((1, 4, 7, 6), (4, 3, 3, 3), 2, 1, 1),
                                  ((2, 3, 4, 5), (3, 5, 5, 5), 3, 2, (2, 1))], ids=str)
def test_strided_conv_transpose2d_with_output_padding(case):
    """conv_transpose2d's forward is the strided grad-input, its grad-input the strided
    forward (both in phase space), through the public API."""
    x_shape, w_shape, stride, padding, output_padding = case
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, x_shape).astype(F32)
    w = rng.uniform(-1, 1, w_shape).astype(F32)
    want = ref.conv_transpose2d(x.astype(np.float64), w.astype(np.float64), None, stride, padding, output_padding)
    got = convkit.conv_transpose2d(x, w, None, stride, padding, output_padding, algo="winograd")
    assert_close(got, want, F32)
    gy = rng.uniform(-1, 1, want.shape).astype(F32)
    gx, gw, _ = convkit.conv_transpose2d_backward(gy, x, w, stride, padding, output_padding, need_bias=False,
                                                  algo="winograd")
    gy64, x64, w64 = gy.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    assert_close(gx, ref.conv2d(gy64, w64, None, stride, padding), F32)
    assert_close(gw, ref.conv_transpose2d_backward(gy64, x64, w64, stride, padding, output_padding)[1], F32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", [c for c in CONV_GRID if _covered(c)], ids=str)
def test_the_conv2d_grid_cases_it_covers(case, isa):
    """The other algorithms' grid (tests/test_conv2d.py), where Winograd computes it:
    forward with the fused bias and ReLU, grad-input and grad-weight."""
    x, w, b, gy = conv_inputs(case, F32)
    y64, gx64, gw64 = conv_reference(case, F32)[:3]
    with forced_isa(isa):
        y = convkit.conv2d(x, w, b, **case.kwargs, activation="relu", algo="winograd")
        gx, gw, _ = convkit.conv2d_backward(gy, x, w, **case.kwargs, need_bias=False, algo="winograd")
    assert_close(y, np.maximum(y64 + b.astype(np.float64).reshape(-1, 1, 1), 0.0), F32)
    assert_close(gx, gx64, F32)
    assert_close(gw, gw64, F32)


@pytest.mark.parametrize("case", [(1, 8, 6, 5, 4, 1, 1), (2, 3, 9, 6, 2, 0, 2)], ids=_case_id)
def test_conv_transpose2d_at_stride_1_is_the_grad_input(case):
    N, C, H, W, K, padding, dilation = case
    x, w, _, _, _ = _data(case)  # conv_transpose2d's weight is (in, out, 3, 3): here (K, C)
    xt = np.random.default_rng(1).uniform(-1, 1, (N, K, H, W)).astype(F32)
    want = ref.conv_transpose2d(xt.astype(np.float64), w.astype(np.float64), None, 1, padding, 0, 1, dilation)
    got = convkit.conv_transpose2d(xt, w, None, 1, padding, 0, 1, dilation, algo="winograd")
    assert_close(got, want, F32)


def test_every_gemm_kernel_and_several_super_blocks():
    """Each register tile of the active ISA (tile groups cut at every R, output channels
    at every P), and a layer of more tiles than one super-block holds (grad-weight: 1058
    tiles of 12 KB, about 350 to a super-block)."""
    cases = [(1, 5, 9, 13, 21, 1, 1), (2, 16, 90, 92, 8, 1, 1)]
    names = [k["name"] for k in _cpu.conv_kernels("float32") if "_direct_" in k["name"]]
    try:
        for name in names:
            _cpu.force_conv_kernels(direct=name)
            for case in cases[:1] if name != names[0] else cases:
                x, w, b, _, y64 = _data(case)
                y = convkit.conv2d(x, w, b, 1, case[5], case[6], algo="winograd")
                assert_close(y, y64 + b.astype(np.float64).reshape(-1, 1, 1), F32, err_msg=name)
        _cpu.force_conv_kernels()
        gw_names = [k["name"] for k in _cpu.conv_kernels("float32") if "_gw_" in k["name"]]
        for name in gw_names:
            _cpu.force_conv_kernels(gw=name)
            for case in cases[:1] if name != gw_names[0] else cases:
                x, w, _, gy, _ = _data(case)
                want = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), (3, 3), 1, case[5],
                                              case[6], 1)
                gw = convkit.conv2d_backward(gy, x, w, 1, case[5], case[6], need_input=False, need_bias=False,
                                             algo="winograd")[1]
                assert_close(gw, want, F32, err_msg=name)
    finally:
        _cpu.force_conv_kernels()


# Several blocks of output channels, the last one narrower (C and K past multiples of every
# ISA's block and vector width), and few tiles, the last tile group not full: at two
# threads such a layer's channel blocks are split between the threads, not its tiles.
BLOCK_CASES = [(1, 70, 9, 9, 100, 1, 1), (2, 130, 6, 7, 9, (1, 0, 2, 1), 1)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=_case_id)
def test_output_channel_blocks_split_between_threads(case, isa):
    """Each call three times: new weights, weights seen once before (their transformed
    blocks are then kept), and a hit on the kept blocks. Grad-weight: blocks of output
    channels and groups of input channels, split between the threads."""
    N, C, H, W, K, padding, dilation = case
    x, w, b, gy, y64 = _data(case)
    want_y = y64 + b.astype(np.float64).reshape(-1, 1, 1)
    want_gx = ref.conv2d_grad_input(gy.astype(np.float64), w.astype(np.float64), (H, W), 1, padding, dilation, 1)
    want_gw = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), (3, 3), 1, padding, dilation, 1)
    before = convkit.get_num_threads()
    try:
        with forced_isa(isa):
            for threads in (1, 2):
                convkit.set_num_threads(threads)
                for _ in range(3):
                    assert_close(convkit.conv2d(x, w, b, 1, padding, dilation, algo="winograd"), want_y, F32)
                    gx, gw, _ = convkit.conv2d_backward(gy, x, w, 1, padding, dilation, need_bias=False,
                                                        algo="winograd")
                    assert_close(gx, want_gx, F32)
                    assert_close(gw, want_gw, F32)
    finally:
        convkit.set_num_threads(before)


@pytest.mark.parametrize("case", [(2, 24, 21, 18, 40, 1, 2), BLOCK_CASES[0]], ids=_case_id)
def test_results_do_not_depend_on_thread_count(case):
    """Tiles split between threads, and (few tiles) output-channel blocks."""
    x, w, b, gy, _ = _data(case)
    padding, dilation = case[5], case[6]
    before = convkit.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            convkit.set_num_threads(n)
            runs.append((convkit.conv2d(x, w, b, 1, padding, dilation, algo="winograd"),
                         *convkit.conv2d_backward(gy, x, w, 1, padding, dilation, need_bias=False,
                                                  algo="winograd")[:2]))
    finally:
        convkit.set_num_threads(before)
    for run in runs[1:]:
        for a, b_ in zip(runs[0], run):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("N, C, H", [(2, 64, 40), (1, 96, 42)], ids=("200 tiles of 64", "121 tiles of 96"))
def test_super_blocks_taken_by_either_thread_give_the_same_bits(N, C, H):
    """Enough tiles for several super-blocks per thread, which the threads take from a
    shared counter in any order: 200 tiles of 64 channels, about 56 to a block; 121 of 96,
    whose transformed weights (1.3 MB) exceed the L2, in blocks of at least 48 tiles that
    the tile groups do not divide evenly."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, H)).astype(F32)
    w = (rng.standard_normal((C, C, 3, 3)) / (3 * np.sqrt(C))).astype(F32)
    runs = []
    before = convkit.get_num_threads()
    try:
        for n in (1, 2, 3, 2):
            convkit.set_num_threads(n)
            runs.append(convkit.conv2d(x, w, None, 1, 1, algo="winograd"))
    finally:
        convkit.set_num_threads(before)
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    assert_close(runs[0], ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, 1, 1), F32)


@pytest.mark.parametrize("what, kwargs, dtype, k", [
    ("5x5 kernel", {}, F32, 5),
    ("7x7 stride 2: 4 phase taps", {"stride": 2, "padding": 3}, F32, 7),
    ("stride and dilation", {"stride": 2, "dilation": 2}, F32, 3),
    ("groups 2", {"groups": 2}, F32, 3),
    ("float64", {}, np.float64, 3),
])
def test_refuses_what_it_does_not_compute(what, kwargs, dtype, k):
    x = np.ones((1, 4, 8, 8), dtype)
    w = np.ones((4, 4 // kwargs.get("groups", 1), k, k), dtype)
    with pytest.raises(NotCovered, match="winograd"):
        convkit.conv2d(x, w, algo="winograd", **kwargs)
    y = convkit.conv2d(x, w, algo="auto", **kwargs)  # auto never picks it there
    assert y.shape[:2] == (1, 4)
    with pytest.raises(NotCovered, match="winograd"):
        convkit.conv2d_backward(y, x, w, need_input=False, algo="winograd", **kwargs)


def test_the_binding_checks_the_shape_again():
    with pytest.raises(ValueError, match="at most 3 taps per stride phase"):
        _cpu.winograd_conv2d_forward(np.ones((1, 4, 8, 8), F32), np.ones((4, 4, 5, 5), F32), None, (1, 1),
                                     (0, 0, 0, 0), (1, 1))
    with pytest.raises(ValueError, match="grad_output"):
        _cpu.winograd_conv2d_grad_input(np.ones((1, 4, 5, 5), F32), np.ones((4, 4, 3, 3), F32), (8, 8), (1, 1),
                                        (0, 0, 0, 0), (1, 1))
    with pytest.raises(ValueError, match="grad_output"):  # stride 2 makes 4x4 from 8x8, not 5x5
        _cpu.winograd_conv2d_grad_input(np.ones((1, 4, 5, 5), F32), np.ones((4, 4, 3, 3), F32), (8, 8), (2, 2),
                                        (1, 1, 1, 1), (1, 1))
    with pytest.raises(ValueError, match="grad_output"):
        _cpu.winograd_conv2d_grad_weight(np.ones((1, 4, 5, 5), F32), np.ones((1, 4, 8, 8), F32), (3, 3), (1, 1),
                                         (0, 0, 0, 0), (1, 1))
    with pytest.raises(ValueError, match="at most 3 taps per stride phase"):
        _cpu.winograd_conv2d_grad_weight(np.ones((1, 4, 4, 4), F32), np.ones((1, 4, 8, 8), F32), (5, 5), (1, 1),
                                         (0, 0, 0, 0), (1, 1))


def test_weights_changed_in_place_between_calls_are_seen():
    """The transformed weights are cached for weights seen before (src/conv_winograd.cpp):
    a change in place, even of one value, must reach the result; so must the same weights
    used for the grad-input (turned, another cache entry)."""
    case = (1, 6, 10, 9, 5, 1, 1)
    x, w, b, gy, _ = _data(case)
    w = w.copy()
    for step in range(4):
        if step == 3:
            w[4, 2, 1, 2] += 0.5  # in place, after the cache holds an entry for w
        want = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, 1, 1, 1)
        assert_close(convkit.conv2d(x, w, None, 1, 1, 1, algo="winograd"), want, F32)
        gx = convkit.conv2d_backward(gy, x, w, 1, 1, 1, need_weight=False, need_bias=False, algo="winograd")[0]
        assert_close(gx, ref.conv2d_grad_input(gy.astype(np.float64), w.astype(np.float64), (10, 9), 1, 1, 1, 1), F32)


def test_cached_weights_are_kept_apart_per_stride_and_padding():
    """The same weights at another stride or padding make other phase-space taps: each call
    seen before must find its own transformed weights, not those of the other geometry."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (1, 4, 12, 12)).astype(F32)
    w = rng.uniform(-1, 1, (8, 4, 4, 4)).astype(F32)
    for _ in range(3):  # the second call of each makes the cache entry, the third reads it
        for stride, padding in ((2, 1), (2, 0), (2, 2), (1, 0)):
            want = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, stride, padding)
            if stride == 1:  # 4 taps at stride 1: not Winograd's, checked by the others
                with pytest.raises(NotCovered):
                    convkit.conv2d(x, w, None, stride, padding, algo="winograd")
                continue
            assert_close(convkit.conv2d(x, w, None, stride, padding, algo="winograd"), want, F32)


def test_grad_weight_error_stays_small_over_many_tiles():
    """Grad-weight sums every tile of the batch (here 1024): in runs of tiles, each run's
    sums then added (src/conv_winograd.cpp, kSumTiles), its error stays near the direct
    engine's (2.3e-6 here; 7.2e-6 with runs of 256); one float32 sum over all the tiles
    erred 1.8e-5, and more with every image."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 32, 32, 32)).astype(F32)
    gy = rng.standard_normal((16, 32, 32, 32)).astype(F32)
    want = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), (3, 3), 1, 1, 1, 1)
    gw = convkit.conv2d_backward(gy, x, np.zeros((32, 32, 3, 3), F32), 1, 1, need_input=False, need_bias=False,
                                 algo="winograd")[1]
    assert np.abs(gw - want).max() <= 1e-5 * np.abs(want).max()
