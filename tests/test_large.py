"""Large sizes: index arithmetic is 64-bit, and memory that cannot be had is MemoryError.

The > 2^31-element tensors cost no memory: np.zeros maps untouched pages to the kernel's
shared zero page (reading them costs page-table entries, not RAM), and only the pages
holding the few planted values become real. Pooling reads its input in place, so a
global or windowed pool over 2^31 + elements exercises the kernels' offsets (plane
offsets n*C*H*W + ..., flat indices h*W + w past 2^31, int64 argmax indices) at the
price of 17 MB of page tables and about 2 s a test: marked slow, and cheap enough that
the default run keeps them (README, "Checking builds"). Under AddressSanitizer, whose
allocation cap (4 GiB, README) refuses the 8.6 GB zero array, they skip.

The MemoryError tests are cheap and run by default: the process's address space is capped
(tests/op_cases.py memory_cap) so that a workspace or output that does not fit fails
cleanly in the allocation, as it would on a machine without that memory.
"""
from __future__ import annotations

import numpy as np
import pytest

import convkit
import op_cases as oc

def _skip_under_asan():
    if oc.under_asan():
        pytest.skip("AddressSanitizer caps allocations and reserves the address space (README)")


def _compiled(primitive):
    """The compiled algorithms of a primitive that compute every call (not Winograd's 3x3 only)."""
    return [r.algo for r in convkit.implementations("cpu")
            if r.primitive == primitive and r.algo != "reference" and r.covers is None]


def _planted(shape, rng, count=24):
    """A zero float32 array (lazily mapped) with `count` random values at random flat
    positions, half of them past 2^31; returns the array and the positions."""
    x = np.zeros(shape, np.float32)
    flat = x.reshape(-1)
    pos = np.unique(np.concatenate([rng.integers(0, 2**31, count // 2), rng.integers(2**31, flat.size, count // 2)]))
    flat[pos] = rng.uniform(0.5, 1.0, pos.size).astype(np.float32) * rng.choice([-1, 1], pos.size)
    return x, pos


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, 46_341, 46_341), (2, 2, 23_171, 23_171)], ids=["one-plane", "four-planes"])
@pytest.mark.parametrize("algo", _compiled("max_pool2d"))
def test_global_max_pool_past_2_31_elements(algo, shape):
    _skip_under_asan()
    rng = np.random.default_rng(7)
    x, pos = _planted(shape, rng)
    assert x.size > 2**31
    y, idx = convkit.global_max_pool2d(x, return_indices=True, algo=algo)
    plane = x.shape[2] * x.shape[3]
    for p in range(shape[0] * shape[1]):
        mine = pos[(pos >= p * plane) & (pos < (p + 1) * plane)]
        vals = x.reshape(-1)[mine]
        best = max(0.0, vals.max()) if mine.size else 0.0
        n, c = divmod(p, shape[1])
        assert y[n, c, 0, 0] == best
        if mine.size and vals.max() > 0:  # else the first zero: index 0 or the first gap
            assert idx[n, c, 0, 0] == mine[vals.argmax()] - p * plane


@pytest.mark.slow
@pytest.mark.parametrize("algo", _compiled("avg_pool2d"))
def test_global_avg_pool_past_2_31_elements(algo):
    _skip_under_asan()
    rng = np.random.default_rng(8)
    x, pos = _planted((1, 1, 46_341, 46_341), rng)
    y = convkit.global_avg_pool2d(x, algo=algo)
    want = np.float64(x.reshape(-1)[pos].astype(np.float64).sum()) / x.size
    np.testing.assert_allclose(y[0, 0, 0, 0], want, rtol=1e-4, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("algo", _compiled("max_pool2d"))
def test_windowed_max_pool_offsets_past_2_31(algo):
    """8x8 windows, stride 8, over one plane of 2^31 + elements: every planted value is
    the maximum of its window (the rest are zeros), at the window's flat index."""
    _skip_under_asan()
    rng = np.random.default_rng(9)
    x, pos = _planted((1, 1, 46_341, 46_341), rng)
    x.reshape(-1)[pos] = np.abs(x.reshape(-1)[pos])
    y, idx = convkit.max_pool2d(x, 8, return_indices=True, algo=algo)
    W = x.shape[3]
    for p in pos:
        h, w = divmod(int(p), W)
        if h // 8 < y.shape[2] and w // 8 < y.shape[3]:
            assert y[0, 0, h // 8, w // 8] == x[0, 0, h, w]
            assert idx[0, 0, h // 8, w // 8] == p


# ------------------------------------------------------------------------ MemoryError
@pytest.mark.parametrize("algo", _compiled("conv2d_grad_input") + ["reference"])
def test_an_output_that_cannot_be_allocated_is_memory_error(algo):
    """conv_transpose2d of a 2x2 image with stride 33,000 asks for a 4.4 GB output (under
    2^31 elements, so no 32-bit BLAS limit refuses it first)."""
    x, w = np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 1, 1), np.float32)
    with oc.memory_cap(), pytest.raises(MemoryError):
        convkit.conv_transpose2d(x, w, stride=33_000, algo=algo)


@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward", "conv_transpose2d"])
def test_a_workspace_that_cannot_be_allocated_is_memory_error(op):
    """The direct engine packs its input into one workspace (stride-phase planes, about
    the input's size): with the address space capped between the output's size and the
    output's plus the workspace's, the workspace fails with MemoryError, and the next call
    still works. (im2col's column buffer is capped by design, so it cannot be starved
    without starving the output first.)"""
    _skip_under_asan()
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 1024, 1024), np.float32)  # 256 MiB
    w = rng.random((1, 1, 3, 3), np.float32)
    call = {"conv2d": lambda: convkit.conv2d(x, w, padding=1, algo="direct"),
            "conv2d_backward": lambda: convkit.conv2d_backward(x, x, w, padding=1, need_input=False, algo="direct"),
            "conv_transpose2d": lambda: convkit.conv_transpose2d(x, w, padding=1, algo="direct")}[op]
    with oc.memory_cap(extra_bytes=384 << 20), pytest.raises(MemoryError):
        call()
    small = convkit.conv2d(x[:1, :, :9, :9], w, padding=1, algo="direct")
    np.testing.assert_allclose(small, convkit.reference.conv2d(x[:1, :, :9, :9], w, padding=1), rtol=1e-5, atol=1e-5)


def test_a_broadcast_input_too_large_to_copy_is_memory_error():
    """A stride-0 view of 2^33 elements: the API makes it contiguous, which cannot be had."""
    x = np.broadcast_to(np.ones((1, 1, 8, 8), np.float32), (2**27, 1, 8, 8))
    w = np.ones((1, 1, 3, 3), np.float32)
    with oc.memory_cap(), pytest.raises(MemoryError):
        convkit.conv2d(x, w)
