"""Every public op: NHWC is the transposed NCHW result, dtype in is dtype out, any memory
order and any array-like gives the same result, NaN propagates."""
import numpy as np
import pytest

import convkit
from helpers import DTYPES, assert_close, cpu_algos, dtype_id
from public_ops import OPS, to_nchw, to_nhwc

def _by_algo(ops):
    return [pytest.param(op, algo, id=f"{op.id}-{algo}") for op in ops for algo in cpu_algos(*op.primitives)]


def _compare(got, expected, dtype):
    for g, e in zip(got, expected, strict=True):
        if np.issubdtype(np.asarray(e).dtype, np.integer):
            assert g.dtype == np.int64
            np.testing.assert_array_equal(g, e)
        else:
            assert_close(g, e, dtype)


def test_the_table_covers_every_public_op():
    assert {op.name for op in OPS} == set(convkit.functional.__all__)


@pytest.mark.parametrize("op, algo", _by_algo(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_matches_reference_and_keeps_dtype(op, algo, dtype):
    """float32 in -> float32 out, float64 in -> float64 out, values as the reference's."""
    arrays = op.arrays(dtype)
    _compare(op.run(arrays, algo=algo), op.run_reference(arrays), dtype)


@pytest.mark.parametrize("op, algo", _by_algo(OPS))
def test_nhwc_is_the_transposed_nchw_result(op, algo):
    arrays = op.arrays(np.float64)
    nchw = op.run(arrays, algo=algo)
    nhwc_in = [to_nhwc(a) if act else a for a, act in zip(arrays, op.activations)]
    nhwc = op.run(nhwc_in, layout="NHWC", algo=algo)
    assert all(o.flags.c_contiguous for o in nhwc)
    _compare([to_nchw(o) if act else o for o, act in zip(nhwc, op.outputs, strict=True)], nchw, np.float64)
    # the layout string is case-insensitive
    _compare(op.run(nhwc_in, layout="nhwc", algo=algo), nhwc, np.float64)


def _fortran(a):
    return np.asfortranarray(a)


def _strided(a):
    """A non-contiguous view with the same values: every other element of a larger array."""
    big = np.full(a.shape[:-1] + (2 * a.shape[-1] + 1,), np.nan, a.dtype)
    big[..., 1::2] = a
    view = big[..., 1::2]
    assert not view.flags.c_contiguous
    return view


def _reversed_twice(a):
    """Negative strides on every axis (the values in their original places)."""
    view = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])[(slice(None, None, -1),) * a.ndim]
    assert any(s < 0 for s in view.strides)
    return view


@pytest.mark.parametrize("make", [_fortran, _strided, _reversed_twice])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.id)
def test_memory_order_does_not_change_the_result(op, layout, make):
    arrays = op.arrays(np.float32)
    if layout == "NHWC":
        arrays = [to_nhwc(a) if act else a for a, act in zip(arrays, op.activations)]
    contiguous = op.run(arrays, layout=layout)
    other = [make(a) for a in arrays]
    _compare(op.run(other, layout=layout), contiguous, np.float32)
    for a, b in zip(arrays, other):
        np.testing.assert_array_equal(a, b)  # inputs untouched


@pytest.mark.parametrize("op, algo", _by_algo(OPS))
def test_nan_propagates(op, algo):
    """A NaN in the first argument turns into NaN every output it reaches through real
    data (not padding), and nothing that the reference leaves finite."""
    arrays = op.arrays(np.float64)
    first = arrays[0].copy()
    first[0, -1, min(1, first.shape[2] - 1), max(0, first.shape[3] - 2)] = np.nan  # near a corner
    got = op.run([first, *arrays[1:]], algo=algo)
    nan_ref = op.run_reference([first, *arrays[1:]])
    # the ops are linear in their first argument (or, for max pools, monotone in it), so
    # the difference below is nonzero exactly where the NaN's position contributes
    marker = np.isnan(first).astype(np.float64)
    reached = [np.asarray(a) != np.asarray(b) for a, b in
               zip(op.run_reference([marker, *arrays[1:]]), op.run_reference([0 * marker, *arrays[1:]]))]
    for g, r, must in zip(got, nan_ref, reached, strict=True):
        if np.issubdtype(g.dtype, np.integer):
            continue  # max-pool indices point at the NaN; the pool tests check them
        assert must.any(), "the NaN must reach at least one output"
        assert np.isnan(g[must]).all(), "an output fed by the NaN is not NaN"
        assert not np.isnan(g[~np.isnan(r)]).any(), "NaN where the reference is finite"


def test_nan_propagates_through_relu():
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5))
    x[0, 1, 2, 2] = np.nan
    w = np.random.default_rng(2).standard_normal((3, 2, 3, 3))
    for algo in cpu_algos("conv2d_forward"):
        y = convkit.conv2d(x, w, padding=1, activation="relu", algo=algo)
        np.testing.assert_array_equal(np.isnan(y[0, :, 1:4, 1:4]), True)
        assert np.isnan(y).sum() == 3 * 9 and (y[~np.isnan(y)] >= 0).all()


# ------------------------------------------------------------------------ array-likes
class ArrayInterfaceOnly:
    """Exposes only __array_interface__ (as a C extension or an older library would)."""

    def __init__(self, a):
        self._a = a
        self.__array_interface__ = a.__array_interface__


class DLPackOnly:
    """Exposes only the DLPack protocol (as a CPU tensor of another library would)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


ARRAY_LIKES = {
    "memoryview": memoryview,
    "array_interface": ArrayInterfaceOnly,
    "dlpack": DLPackOnly,
}


@pytest.mark.parametrize("wrap", ARRAY_LIKES.values(), ids=ARRAY_LIKES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", [op for op in OPS if op.id in ("conv2d", "conv2d_backward", "conv_transpose2d",
                                                               "separable_conv2d", "max_pool2d_backward")],
                         ids=lambda op: op.id)
def test_array_likes_are_accepted(op, dtype, wrap):
    arrays = op.arrays(dtype)
    assert not any(isinstance(wrap(a), np.ndarray) for a in arrays)
    _compare(op.run([wrap(a) for a in arrays]), op.run(arrays), dtype)

