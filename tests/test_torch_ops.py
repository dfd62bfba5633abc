"""convkit.torch: PyTorch custom ops over convkit's kernels.

Forward against torch.nn.functional (float32), backward by torch.autograd.gradcheck
(float64, finite differences of convkit's own forward), the memory contract (no copy of
contiguous CPU tensors, CUDA routing), the custom-op registrations (opcheck, torch.compile).
"""
import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import convkit  # noqa: E402
import convkit.functional  # noqa: E402
import convkit.torch as ct  # noqa: E402

# torch's own conv2d warns that it copies the input for an even kernel with padding="same".
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


def _rand(*shape, dtype=torch.float64, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)


def _assert_close32(got, want):
    want = want.detach().double()
    np.testing.assert_allclose(got.detach().double().numpy(), want.numpy(), rtol=1e-4,
                               atol=1e-4 * max(1.0, want.abs().max().item()))


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# (input shape, weight shape, conv2d kwargs): stride, padding (int, pair, 4-tuple, strings),
# dilation, groups, kernels larger than the image, 1x1 images, odd "same" totals.
CONV_CASES = [
    ((2, 3, 6, 5), (4, 3, 3, 3), dict()),
    ((1, 2, 7, 7), (3, 2, 3, 2), dict(stride=2, padding=1)),
    ((1, 2, 6, 7), (3, 2, 3, 3), dict(stride=(1, 2), padding=(0, 2), dilation=(2, 1))),
    ((1, 2, 5, 6), (2, 2, 2, 4), dict(padding="same")),
    ((1, 2, 5, 6), (2, 2, 3, 3), dict(padding="valid", dilation=2)),
    ((1, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ((1, 3, 4, 4), (6, 1, 3, 3), dict(groups=3, padding=1, stride=2)),
    ((2, 2, 2, 2), (3, 2, 3, 3), dict(padding=1)),
    ((1, 2, 1, 1), (3, 2, 1, 1), dict()),
]
# convkit-only paddings (no torch twin): checked against convkit.reference.
CONV_ONLY_CASES = [
    ((1, 2, 7, 6), (3, 2, 3, 3), dict(stride=2, padding="same")),
    ((1, 2, 5, 5), (2, 2, 3, 2), dict(padding=(0, 2, 1, 0))),
]

CONVT_CASES = [
    ((1, 3, 4, 4), (3, 2, 3, 3), dict()),
    ((2, 2, 3, 4), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 3), (4, 1, 2, 3), dict(stride=(2, 3), output_padding=(1, 2), groups=2)),
    ((1, 2, 4, 3), (2, 2, 3, 3), dict(dilation=2, output_padding=1)),
    ((1, 2, 1, 1), (2, 3, 3, 3), dict(stride=3, padding=(1, 0))),
]

MAX_POOL_CASES = [
    ((2, 2, 6, 6), dict(kernel_size=2)),
    ((1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 8), dict(kernel_size=(2, 3), stride=(2, 1), dilation=2)),
    ((1, 2, 7, 7), dict(kernel_size=2, stride=2, ceil_mode=True)),
    ((1, 1, 8, 7), dict(kernel_size=3, stride=3, padding=1, ceil_mode=True)),
]

AVG_POOL_CASES = [
    ((2, 2, 6, 6), dict(kernel_size=2)),
    ((1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((1, 2, 7, 7), dict(kernel_size=2, stride=2, ceil_mode=True)),
    ((1, 1, 8, 7), dict(kernel_size=3, stride=3, padding=1, ceil_mode=True, count_include_pad=False)),
    ((1, 2, 5, 5), dict(kernel_size=(2, 3), padding=(1, 1), divisor_override=4)),
]


def _conv_inputs(x_shape, w_shape, bias, dtype, grads=(True, True, True), out_channels=None):
    K = w_shape[0] if out_channels is None else out_channels
    b = _rand(K, dtype=dtype, grad=grads[2], seed=2) if bias else None
    return _rand(*x_shape, dtype=dtype, grad=grads[0]), _rand(*w_shape, dtype=dtype, grad=grads[1], seed=1), b


# ------------------------------------------------------------------------------ conv2d
@pytest.mark.parametrize("x_shape, w_shape, kw", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward_matches_torch(x_shape, w_shape, kw, bias):
    x, w, b = _conv_inputs(x_shape, w_shape, bias, torch.float32)
    _assert_close32(ct.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw))


@pytest.mark.parametrize("x_shape, w_shape, kw", CONV_CASES + CONV_ONLY_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_gradcheck(x_shape, w_shape, kw, bias):
    x, w, b = _conv_inputs(x_shape, w_shape, bias, torch.float64)
    _gradcheck(lambda x, w, b: ct.conv2d(x, w, b, **kw), x, w, b)
    want = convkit.reference.conv2d(*(None if t is None else t.detach().numpy() for t in (x, w, b)), **kw)
    np.testing.assert_allclose(ct.conv2d(x, w, b, **kw).detach().numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grads", [(True, False, False), (False, True, False), (False, False, True)])
def test_conv2d_computes_only_the_gradients_asked_for(grads, monkeypatch):
    asked = []
    real = convkit.functional.conv2d_backward

    def spy(*args, need_input, need_weight, need_bias, **kw):
        asked.append((need_input, need_weight, need_bias))
        return real(*args, need_input=need_input, need_weight=need_weight, need_bias=need_bias, **kw)

    monkeypatch.setattr(convkit.functional, "conv2d_backward", spy)
    x, w, b = _conv_inputs((1, 2, 5, 5), (3, 2, 3, 3), True, torch.float64, grads)
    ct.conv2d(x, w, b, padding=1).sum().backward()
    assert asked == [grads]
    assert [t.grad is not None for t in (x, w, b)] == list(grads)
    xr, wr, br = (t.detach().requires_grad_(g) for t, g in zip((x, w, b), grads))
    F.conv2d(xr, wr, br, padding=1).sum().backward()
    for got, want in zip((x, w, b), (xr, wr, br)):
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)


def test_conv2d_unbatched_input():
    x, w, b = _conv_inputs((3, 6, 5), (4, 3, 3, 3), True, torch.float64)
    torch.testing.assert_close(ct.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1))


def test_worked_example_from_the_design_notes():
    image = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]],
                         dtype=torch.float32)
    kernel = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float32)
    y = ct.conv2d(image[None, None], kernel[None, None])
    assert y[0, 0].tolist() == [[4, 3, 4], [2, 4, 3], [2, 3, 4]]


# ---------------------------------------------------------------------- conv_transpose2d
@pytest.mark.parametrize("x_shape, w_shape, kw", CONVT_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_forward_matches_torch(x_shape, w_shape, kw, bias):
    K = w_shape[1] * kw.get("groups", 1)
    x, w, b = _conv_inputs(x_shape, w_shape, bias, torch.float32, out_channels=K)
    _assert_close32(ct.conv_transpose2d(x, w, b, **kw), F.conv_transpose2d(x, w, b, **kw))


@pytest.mark.parametrize("x_shape, w_shape, kw", CONVT_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_gradcheck(x_shape, w_shape, kw, bias):
    K = w_shape[1] * kw.get("groups", 1)
    x, w, b = _conv_inputs(x_shape, w_shape, bias, torch.float64, out_channels=K)
    _gradcheck(lambda x, w, b: ct.conv_transpose2d(x, w, b, **kw), x, w, b)


# ----------------------------------------------------------------- depthwise and separable
@pytest.mark.parametrize("multiplier, kw", [(1, dict(padding=1)), (2, dict(stride=2, padding="same", dilation=1)),
                                            (1, dict(dilation=2))])
def test_depthwise_conv2d(multiplier, kw):
    x, w, b = _conv_inputs((1, 3, 6, 6), (3 * multiplier, 1, 3, 3), True, torch.float64)
    _gradcheck(lambda x, w, b: ct.depthwise_conv2d(x, w, b, **kw), x, w, b)
    if kw.get("padding") != "same":
        torch.testing.assert_close(ct.depthwise_conv2d(x, w, b, **kw), F.conv2d(x, w, b, groups=3, **kw))


def test_depthwise_conv2d_rejects_a_dense_weight():
    with pytest.raises(ValueError, match="depthwise weight"):
        ct.depthwise_conv2d(_rand(1, 3, 5, 5), _rand(3, 3, 3, 3))


@pytest.mark.parametrize("bias", [True, False])
def test_separable_conv2d(bias):
    x, dw, b = _conv_inputs((1, 2, 6, 5), (4, 1, 3, 3), bias, torch.float64, out_channels=3)
    pw = _rand(3, 4, 1, 1, seed=3)
    _gradcheck(lambda x, dw, pw, b: ct.separable_conv2d(x, dw, pw, b, padding=1), x, dw, pw, b)
    want = F.conv2d(F.conv2d(x, dw, None, padding=1, groups=2), pw, b)
    torch.testing.assert_close(ct.separable_conv2d(x, dw, pw, b, padding=1), want)


# ------------------------------------------------------------------------------ pooling
@pytest.mark.parametrize("x_shape, kw", MAX_POOL_CASES)
def test_max_pool2d(x_shape, kw):
    x = _rand(*x_shape)
    _gradcheck(lambda x: ct.max_pool2d(x, **kw), x)
    y, idx = ct.max_pool2d(x.float(), **kw, return_indices=True)
    want_y, want_idx = F.max_pool2d(x.float(), **kw, return_indices=True)
    _assert_close32(y, want_y)
    assert torch.equal(idx, want_idx)


@pytest.mark.parametrize("x_shape, kw", AVG_POOL_CASES)
def test_avg_pool2d(x_shape, kw):
    x = _rand(*x_shape)
    _gradcheck(lambda x: ct.avg_pool2d(x, **kw), x)
    _assert_close32(ct.avg_pool2d(x.float(), **kw), F.avg_pool2d(x.float(), **kw))


def test_global_pools():
    x = _rand(2, 3, 4, 5)
    _gradcheck(ct.global_avg_pool2d, x)
    _gradcheck(ct.global_max_pool2d, x)
    torch.testing.assert_close(ct.global_avg_pool2d(x), F.adaptive_avg_pool2d(x, 1))
    y, idx = ct.global_max_pool2d(x, return_indices=True)
    want_y, want_idx = F.adaptive_max_pool2d(x, 1, return_indices=True)
    torch.testing.assert_close(y, want_y)
    assert torch.equal(idx, want_idx)


def test_unbatched_pools():
    x = _rand(3, 6, 6)
    torch.testing.assert_close(ct.max_pool2d(x, 2), F.max_pool2d(x, 2))
    torch.testing.assert_close(ct.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(x, 3, 1, 1))


# ----------------------------------------------------------------------- float32 grid
# torch refuses padding="same" with stride > 1
@pytest.mark.parametrize("stride, padding, dilation, groups", [
    p for p in itertools.product([1, 2], [0, 1, "same"], [1, 2], [1, 2]) if not (p[1] == "same" and p[0] > 1)])
def test_conv2d_float32_grid(stride, padding, dilation, groups):
    x, w, b = _conv_inputs((2, 4, 9, 8), (6, 4 // groups, 3, 3), True, torch.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    _assert_close32(ct.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw))
    gy = _rand(*F.conv2d(x, w, b, **kw).shape, dtype=torch.float32, grad=False, seed=5)
    got = torch.autograd.grad(ct.conv2d(x, w, b, **kw), (x, w, b), gy)
    want = torch.autograd.grad(F.conv2d(x, w, b, **kw), (x, w, b), gy)
    for g, r in zip(got, want):
        _assert_close32(g, r)


# ------------------------------------------------------------------------ thread team
def test_kernels_on_torchs_openmp_threads_give_the_same_bits():
    """share_torch_threads: convkit's jobs on PyTorch's OpenMP team, from one Python thread or
    several at once, give exactly what convkit's own pool gives (tasks, not threads, split
    the work)."""
    import threading

    openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info() and sys.platform == "linux"
    threads = convkit.get_num_threads()
    x = _rand(2, 16, 20, 20, dtype=torch.float32)
    w = _rand(24, 16, 3, 3, dtype=torch.float32, seed=1)
    gy = _rand(2, 24, 20, 20, dtype=torch.float32, grad=False, seed=2)

    def run():
        y = ct.conv2d(x, w, padding=1)
        return (y, *torch.autograd.grad(y, (x, w), gy))

    try:
        convkit.set_num_threads(2)
        assert ct.share_torch_threads(False) is False
        want = run()
        assert ct.share_torch_threads(True) is openmp
        for got, ref in zip(run(), want):
            assert torch.equal(got, ref)
        results = [None] * 3

        def worker(i):
            results[i] = run()

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        for got in results:
            assert all(torch.equal(g, r) for g, r in zip(got, want))
    finally:
        ct.share_torch_threads(True)
        convkit.set_num_threads(threads)


# ------------------------------------------------------------------------ memory contract
def test_contiguous_cpu_tensors_are_not_copied(monkeypatch):
    seen = {}
    real = convkit.functional.conv2d

    def spy(x, w, b, *args, **kw):
        seen["input"], seen["weight"] = x.ctypes.data, w.ctypes.data
        y = real(x, w, b, *args, **kw)
        seen["output"] = y.ctypes.data
        return y

    monkeypatch.setattr(convkit.functional, "conv2d", spy)
    x, w, b = _conv_inputs((1, 2, 5, 5), (3, 2, 3, 3), True, torch.float32)
    y = ct.conv2d(x, w, b)
    assert seen == {"input": x.data_ptr(), "weight": w.data_ptr(), "output": y.data_ptr()}


def test_non_contiguous_tensors_are_made_contiguous():
    x = _rand(2, 5, 6, 3).permute(0, 3, 1, 2)  # a channels-last view
    w = _rand(3, 4, 3, 3, seed=1).transpose(0, 1)
    assert not x.is_contiguous() and not w.is_contiguous()
    torch.testing.assert_close(ct.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))
    _gradcheck(lambda x, w: ct.conv2d(x, w, padding=1), x, w)


def test_routing_by_device(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    cuda = pytest.importorskip("numba.cuda")
    assert ct._backend_device(torch.zeros(1)) == "cpu"
    with FakeTensorMode():  # a CUDA tensor without a GPU
        assert ct._backend_device(torch.empty(1, device="cuda:1")) == "cuda"
    with pytest.raises(ValueError, match="CPU and CUDA"):
        ct._backend_device(torch.empty(1, device="meta"))
    viewed = []
    monkeypatch.setattr(cuda, "as_cuda_array", lambda t: viewed.append(t) or "numba view", raising=False)  # not in the simulator
    assert isinstance(ct._array(torch.zeros(2)), np.ndarray) and viewed == []
    with FakeTensorMode():  # CUDA tensors without a GPU
        x = torch.empty(1, 2, 5, 5, device="cuda")
        assert ct._array(x) == "numba view" and viewed[0].device.type == "cuda"
        y = ct.conv2d(x, torch.empty(3, 2, 3, 3, device="cuda"), padding="same")
        assert y.shape == (1, 3, 5, 5) and y.device.type == "cuda"


def test_bad_dtype_names_the_argument():
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        ct.conv2d(torch.zeros(1, 1, 3, 3, dtype=torch.float16), torch.zeros(1, 1, 2, 2, dtype=torch.float16))


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="groups=2 must divide"):
        ct.conv2d(torch.zeros(1, 3, 4, 4), torch.zeros(2, 1, 2, 2), groups=2)


# ------------------------------------------------------------------- custom-op machinery
@pytest.mark.parametrize("op, args", [
    ("conv2d", lambda x, w, b: (x, w, b, [2, 1], [1, 0, 1, 1], [1, 2], 1)),
    ("conv_transpose2d", lambda x, w, b: (x, w, b, [2, 2], [1, 1], [1, 0], 1, [1, 1])),
    ("max_pool2d", lambda x, w, b: (x, [2, 2], [2, 1], [1, 0], [1, 1], True)),
    ("avg_pool2d", lambda x, w, b: (x, [3, 2], [2, 2], [1, 1], True, False, None)),
])
def test_opcheck(op, args):
    x, w, b = _conv_inputs((1, 2, 5, 5), (2, 2, 3, 3), True, torch.float64)
    torch.library.opcheck(getattr(torch.ops.convkit, op), args(x, w, b))


def test_torch_compile_traces_forward_and_backward():
    def step(x, w, b):
        return ct.avg_pool2d(ct.max_pool2d(torch.relu(ct.conv2d(x, w, b, padding=1)), 2), 2).sum()

    x, w, b = _conv_inputs((2, 2, 8, 8), (3, 2, 3, 3), True, torch.float64)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(step(x, w, b), (x, w, b))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def test_import_convkit_does_not_import_torch():
    code = "import sys, convkit; convkit.conv2d; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
