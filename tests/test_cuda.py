"""convkit.cuda against convkit.reference, under Numba's CUDA simulator (tests/conftest.py).

The simulator runs every GPU thread as a Python thread, so the shapes are tiny and the
tile ceilings are shrunk (the `small_tiles` fixture) until the shapes still span several
blocks with ragged edges: outputs of 5-7 pixels against 4x4 blocks, 3-5 channels
against 2-channel register blocks and 8-row GEMM tiles, reductions cut into splits.
Tests marked `gpu` need a real device (CONVKIT_TEST_REAL_GPU=1) and are skipped here.
"""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("numba")

import convkit  # noqa: E402
from convkit import reference as ref  # noqa: E402
from convkit import cuda as ck_cuda  # noqa: E402
from convkit.cuda import _device  # noqa: E402
from numba import cuda  # noqa: E402

ALGOS = ("direct", "implicit_gemm")
SMALL = dict(direct_block=(4, 4), direct_channels=2, gemm=(8, 8, 4, 2, 2), reduce_threads=8, map_block=(4, 4),
             fill_blocks=4)
real_gpu = pytest.mark.skipif(_device.SIMULATOR or _device.device_error() is not None,
                              reason="needs a real CUDA GPU (run with CONVKIT_TEST_REAL_GPU=1)")


@pytest.fixture(autouse=True)
def small_tiles():
    with ck_cuda.tiles(**SMALL):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


def close(got, want, dtype, reduction=1):
    """float32 within 1e-4 (absolute part scaled by the output and the reduction length), float64 1e-10."""
    got = got.copy_to_host() if _device.is_device_array(got) else got
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(want).max()))
    else:
        scale = max(1.0, np.abs(want).max()) * max(1.0, reduction / 100)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def arrays(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# ------------------------------------------------------------------------------ conv2d
# (x shape, w shape, stride, padding, dilation, groups): each spans several 4x4 blocks with
# ragged edges, channel counts off the register blocks, and one rule of the geometry.
CONV_CASES = {
    "dense_3x3_pad": ((1, 3, 5, 6), (9, 3, 3, 3), 1, 1, 1, 1),
    "grouped_strided_dilated": ((2, 4, 7, 5), (4, 2, 3, 2), (2, 1), (1, 0, 2, 1), (2, 1), 2),
    "depthwise_x2_same_s2": ((1, 3, 6, 7), (6, 1, 3, 3), 2, "same", 1, 3),
    "kernel_over_1x1_image": ((1, 2, 1, 1), (3, 2, 3, 3), 1, 1, 1, 1),
}
CONV_GRID = [(case, np.float32) for case in CONV_CASES] + [("grouped_strided_dilated", np.float64)]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case,dtype", CONV_GRID, ids=lambda v: getattr(v, "__name__", v))
def test_conv2d_forward_backward(case, dtype, algo, rng):
    xs, ws, stride, padding, dilation, groups = CONV_CASES[case]
    x, w, b = arrays(rng, dtype, xs, ws, ws[0])
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    reduction = ws[1] * ws[2] * ws[3]
    want = ref.conv2d(x, w, b, **geo)
    close(convkit.conv2d(x, w, b, **geo, activation="relu", algo=algo, device="cuda"), np.maximum(want, 0),
          dtype, reduction)
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx, gw, gb = convkit.conv2d_backward(gy, x, w, **geo, need_bias=False, algo=algo, device="cuda")
    gx_ref, gw_ref, _ = ref.conv2d_backward(gy, x, w, **geo)
    close(gx, gx_ref, dtype, ws[0] // groups * ws[2] * ws[3])
    close(gw, gw_ref, dtype, gy.size // ws[0])


@pytest.mark.parametrize("algo", ALGOS)
def test_conv2d_grad_weight_and_bias_split_reductions(algo, rng):
    """A reduction over more pixels than blocks: cut into splits, partials summed on the device."""
    x, w = arrays(rng, np.float32, (2, 2, 6, 6), (2, 2, 3, 3))
    gy = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    with ck_cuda.tiles(fill_blocks=16):
        _, gw, gb = convkit.conv2d_backward(cuda.to_device(gy), cuda.to_device(x), w, padding=1, need_input=False,
                                            algo=algo, device="cuda")
    _, gw_ref, gb_ref = ref.conv2d_backward(gy, x, w, padding=1)
    close(gw, gw_ref, np.float32, 72)
    close(gb, gb_ref, np.float32, 72)


@pytest.mark.parametrize("algo", ALGOS)
def test_empty_batch(algo):
    """N == 0: no launch for empty outputs (CUDA refuses a zero grid); weight and bias gradients are zeros."""
    x, w = np.zeros((0, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    assert convkit.conv2d(x, w, algo=algo, device="cuda").shape == (0, 3, 3, 3)
    gy = cuda.to_device(np.zeros((0, 3, 3, 3), np.float32))
    gx, gw, gb = (a.copy_to_host() for a in convkit.conv2d_backward(gy, x, w, algo=algo, device="cuda"))
    assert gx.shape == (0, 2, 5, 5) and not gw.any() and not gb.any()
    assert convkit.max_pool2d(x, 2, device="cuda").shape == (0, 2, 2, 2)


def test_conv2d_fused_bias_without_relu_and_receptive_field_fallback(rng, monkeypatch):
    """algo="direct" runs the GEMM when no tile of the receptive field fits in shared memory."""
    x, w, b = arrays(rng, np.float32, (1, 2, 5, 5), (3, 2, 3, 3), (3,))
    geom = convkit._args.conv_geometry(x.shape, w.shape, 1, 1, 1, 1)
    assert ck_cuda.conv_direct.tile(2, 3, (5, 5), geom, False, 4) is not None
    monkeypatch.setattr(_device, "SHARED_BYTES", 16)
    assert ck_cuda.conv_direct.tile(2, 3, (5, 5), geom, False, 4) is None
    close(convkit.conv2d(x, w, b, padding=1, algo="direct", device="cuda"), ref.conv2d(x, w, b, padding=1),
          np.float32, 18)


def test_conv_transpose2d_device_arrays(rng):
    """Output padding beyond the stride (dilation 2) exercises the device pad, crop and bias add."""
    x, w, b = arrays(rng, np.float32, (1, 2, 4, 3), (2, 3, 3, 2), (3,))
    geo = dict(stride=1, padding=(1, 0), output_padding=1, groups=1, dilation=2)
    want = ref.conv_transpose2d(x, w, b, **geo)
    y = convkit.conv_transpose2d(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), **geo, device="cuda")
    assert _device.is_device_array(y)
    close(y, want, np.float32, 6)
    gy = rng.standard_normal(want.shape).astype(np.float32)
    gx, gw, gb = convkit.conv_transpose2d_backward(cuda.to_device(gy), cuda.to_device(x), cuda.to_device(w),
                                                   **geo, device="cuda")
    gx_ref, gw_ref, gb_ref = ref.conv_transpose2d_backward(gy, x, w, **geo)
    for got, expected in ((gx, gx_ref), (gw, gw_ref), (gb, gb_ref)):
        assert _device.is_device_array(got)
        close(got, expected, np.float32, gy.size)


def test_separable_conv2d_float64(rng):
    x, dw, pw, b = arrays(rng, np.float64, (1, 2, 5, 5), (4, 1, 3, 3), (3, 4, 1, 1), (3,))
    got = convkit.separable_conv2d(x, dw, pw, b, padding=1, device="cuda")
    close(got, ref.separable_conv2d(x, dw, pw, b, padding=1), np.float64)


# ----------------------------------------------------------------------------- pooling
POOL_CASES = {
    "k3_s2_p1_ceil": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    "k2x3_s1x2_p1x0": dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d(case, dtype, rng):
    kw = dict(POOL_CASES[case], dilation=(2, 1) if case == "k2x3_s1x2_p1x0" else 1)
    x = rng.standard_normal((1, 2, 6, 7)).astype(dtype)
    x[0, 0, 1, :3] = x[0, 0, 1, 0]  # ties keep the first maximum
    want, want_idx = ref.max_pool2d(x, **kw, return_indices=True)
    y, idx = convkit.max_pool2d(x, **kw, return_indices=True, device="cuda")
    close(y, want, dtype)
    np.testing.assert_array_equal(idx, want_idx)
    gy = rng.standard_normal(want.shape).astype(dtype)
    close(convkit.max_pool2d_backward(gy, x, **kw, indices=idx, device="cuda"),
          ref.max_pool2d_backward(gy, x, **kw), dtype)


def test_max_pool2d_nan_and_device_indices(rng):
    x = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    x[0, 0, 2, 3] = np.nan
    want, want_idx = ref.max_pool2d(x, 2, 2, return_indices=True)
    y, idx = convkit.max_pool2d(cuda.to_device(x), 2, 2, return_indices=True, device="cuda")
    assert _device.is_device_array(y) and _device.is_device_array(idx)
    np.testing.assert_array_equal(y.copy_to_host(), want)  # NaN where the window holds one
    np.testing.assert_array_equal(idx.copy_to_host(), want_idx)
    gy = rng.standard_normal(want.shape).astype(np.float32)
    gx = convkit.max_pool2d_backward(cuda.to_device(gy), cuda.to_device(x), 2, 2, indices=idx, device="cuda")
    close(gx, ref.max_pool2d_backward(gy, x, 2, 2), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=5),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
], ids=["ceil_exclude_pad", "divisor_override", "ceil_include_pad"])
def test_avg_pool2d(kw, dtype, rng):
    x = rng.standard_normal((1, 2, 6, 7)).astype(dtype)
    want = ref.avg_pool2d(x, **kw)
    close(convkit.avg_pool2d(x, **kw, device="cuda"), want, dtype)
    gy = rng.standard_normal(want.shape).astype(dtype)
    close(convkit.avg_pool2d_backward(gy, x, **kw, device="cuda"),
          ref.avg_pool2d_backward(gy, x.shape, **kw), dtype)


def test_global_pools(rng):
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    close(convkit.global_avg_pool2d(x, device="cuda"), ref.global_avg_pool2d(x), np.float32)
    y, idx = convkit.global_max_pool2d(x, return_indices=True, device="cuda")
    want, want_idx = ref.global_max_pool2d(x, return_indices=True)
    close(y, want, np.float32)
    np.testing.assert_array_equal(idx, want_idx)
    gy = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    close(convkit.global_avg_pool2d_backward(gy, x, device="cuda"), ref.global_avg_pool2d_backward(gy, x.shape),
          np.float32)
    close(convkit.global_max_pool2d_backward(gy, x, device="cuda"), ref.global_max_pool2d_backward(gy, x),
          np.float32)  # indices recomputed on the device


# ------------------------------------------------------------------ where arrays live
class CudaArrayInterface:
    """A foreign device array (as CuPy's or a torch CUDA tensor's) over simulator memory."""

    def __init__(self, host):
        self.host = host
        self.__cuda_array_interface__ = dict(shape=host.shape, typestr=host.dtype.str, strides=host.strides,
                                             data=(host.ctypes.data, False), version=3)


def test_device_input_gives_device_output_without_copying(rng):
    x, w = arrays(rng, np.float32, (1, 2, 5, 5), (3, 2, 3, 3))
    gy = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    x_view = ck_cuda.as_device_or_host_array(CudaArrayInterface(x), "input")
    x_view[0, 0, 0, 0] = 7.0  # the same memory: written through, seen by the host array
    assert x[0, 0, 0, 0] == 7.0
    y = convkit.conv2d(CudaArrayInterface(x), cuda.to_device(w), padding=1, device="cuda")
    assert _device.is_device_array(y)
    close(y, ref.conv2d(x, w, padding=1), np.float32, 18)
    strided = cuda.to_device(x)[:, :, 1:, ::2]  # a non-contiguous device view: read in place
    close(convkit.conv2d(strided, w, padding=1, device="cuda"), ref.conv2d(x[:, :, 1:, ::2], w, padding=1),
          np.float32, 18)
    gx, gw, gb = convkit.conv2d_backward(cuda.to_device(gy), x, w, padding=1, device="cuda")
    want = ref.conv2d_backward(gy, x, w, padding=1)
    for got, expected in zip((gx, gw, gb), want):
        assert _device.is_device_array(got)
        close(got, expected, np.float32, 25)


def test_nhwc(rng):
    x, w = arrays(rng, np.float32, (1, 4, 5, 2), (3, 2, 3, 3))
    want = ref.conv2d(x.transpose(0, 3, 1, 2), w, padding=1).transpose(0, 2, 3, 1)
    close(convkit.conv2d(x, w, padding=1, layout="NHWC", device="cuda"), want, np.float32, 18)
    gy = cuda.to_device(np.ascontiguousarray(want, dtype=np.float32))
    gb = convkit.conv2d_backward(gy, cuda.to_device(x), w, padding=1, need_input=False, need_weight=False,
                                 layout="NHWC", device="cuda")[2]
    close(gb, want.sum(axis=(0, 1, 2)), np.float32, 20)
    with pytest.raises(ValueError, match="NHWC device arrays"):
        convkit.conv2d(cuda.to_device(x), w, padding=1, layout="NHWC", device="cuda")


# ------------------------------------------------------------------------------ errors
def test_errors_name_what_is_wrong(rng, monkeypatch):
    x, w = arrays(rng, np.float32, (1, 2, 5, 5), (3, 2, 3, 3))
    with pytest.raises(TypeError, match=r"input must be float32 or float64, got int32 with shape \(1, 2, 5, 5\)"):
        convkit.conv2d(cuda.to_device(x.astype(np.int32)), w, device="cuda")
    with pytest.raises(TypeError, match="dtypes must match"):
        convkit.conv2d(cuda.to_device(x), w.astype(np.float64), device="cuda")
    with pytest.raises(ValueError, match=r"algo='im2col' is not available .* valid: \['auto', 'direct', "
                                         r"'implicit_gemm'\]"):
        convkit.conv2d(x, w, algo="im2col", device="cuda")
    with pytest.raises(ValueError, match="indices must be int64"):
        convkit.max_pool2d_backward(np.ones((1, 2, 2, 2), np.float32), x, 2, indices=cuda.to_device(
            np.zeros((1, 2, 2, 2), np.int32)), device="cuda")
    monkeypatch.setattr(_device, "device_error", lambda: "CUDA driver library cannot be found")
    with pytest.raises(RuntimeError, match="no CUDA device: CUDA driver library cannot be found"):
        convkit.conv2d(x, w, device="cuda")


def test_without_numba_device_cuda_says_so():
    import subprocess
    import sys

    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np, convkit\n"
            "try:\n    convkit.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), device='cuda')\n"
            "except RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "device='cuda' is not available" in out and "need Numba" in out and "pip install" in out


def test_registry_and_auto_choice():
    rows = {(i.primitive, i.algo) for i in convkit.implementations("cuda")}
    for prim in ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight"):
        assert {(prim, "direct"), (prim, "implicit_gemm")} <= rows
    for prim in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"):
        assert (prim, "direct") in rows
    from convkit import _args, _auto

    dense = _args.conv_geometry((1, 64, 8, 8), (64, 64, 3, 3), 1, 1, 1, 1)
    depthwise = _args.conv_geometry((1, 64, 8, 8), (64, 1, 3, 3), 1, 1, 1, 64)
    assert _auto.choose("conv2d_forward", dense, "cuda", list(ALGOS)).algo == "implicit_gemm"
    assert _auto.choose("conv2d_forward", depthwise, "cuda", list(ALGOS)).algo == "direct"


def test_info_reports_the_simulator():
    from convkit._info import info_dict

    d = info_dict()
    assert "simulator" in d["cuda device"] and d["cuda algorithms"] == "direct, implicit_gemm"


# -------------------------------------------------------------------------- real GPU
@pytest.mark.gpu
@real_gpu
@pytest.mark.parametrize("algo", ALGOS)
def test_conv2d_real_gpu_default_tiles(algo, rng):
    """The default (large) tiles on a real device: a layer several blocks wide in every direction."""
    x, w, b = arrays(rng, np.float32, (2, 32, 37, 35), (48, 32, 3, 3), (48,))
    with ck_cuda.tiles(**dataclasses.asdict(_device.Tiles())):
        y = convkit.conv2d(x, w, b, padding=1, algo=algo, device="cuda")
        gy = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = convkit.conv2d_backward(gy, x, w, padding=1, algo=algo, device="cuda")
    close(y, ref.conv2d(x, w, b, padding=1), np.float32, 288)
    for got, want in zip((gx, gw, gb), ref.conv2d_backward(gy, x, w, padding=1)):
        close(got, want, np.float32, 2 * 37 * 35)
