"""What the conv test files share: the tolerance rule, the shape grid, forced ISAs.

    assert_close(got, ref, dtype)    the one comparison rule (float32 1e-4, float64 1e-10)
    ConvCase, CONV_CASES             conv2d shapes chosen to hit every dimension's edges
    random_conv_cases(n, seed)       a seeded random sample on top of the chosen grid
    CONV_GRID                        the two together: the grid of the conv2d tests
    conv_inputs(case, dtype)         x, w, b, grad_y of a case (deterministic, read-only)
    conv_reference(case, dtype)      the float64 reference (y without bias, gx, gw, gb)
    DTYPES, dtype_id                 float32 and float64, and their test ids
    param_fixture(name, values)      a fixture taking each value in turn (grids, dtypes)
    algo_fixture(name, *primitives)  a fixture: every CPU algo with those primitives,
                                     under every available ISA (the reference once)

Import it as ``from helpers import ...`` (pytest puts tests/ on sys.path). Inputs are
read-only so an implementation that writes into its input fails loudly.
"""
from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest

import convkit
from convkit import reference as ref

# ------------------------------------------------------------------------ tolerances
DTYPES = (np.float32, np.float64)
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


def assert_close(got, expected, dtype, err_msg=""):
    """got is a NumPy array of ``dtype`` and expected's shape, equal within the rule.

    rtol is 1e-4 (float32) or 1e-10 (float64); atol is the same times the largest finite
    |expected| (at least 1), so an output that is a long sum of cancelling terms is held
    to the precision of its terms, not of its (small) result. NaNs must match NaNs.
    """
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray), f"expected a NumPy array, got {type(got).__name__}"
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {dtype}"
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"shape {got.shape}, expected {expected.shape}"
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * scale, err_msg=err_msg)


# ------------------------------------------------------------------------ shape grid
@dataclass(frozen=True)
class ConvCase:
    """One conv2d call: input (N, C, H, W), weight (K, C/groups, kh, kw)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    kh: int
    kw: int
    stride: int | tuple = 1
    padding: int | tuple | str = 0
    dilation: int | tuple = 1
    groups: int = 1

    @property
    def id(self) -> str:
        def s(v):
            return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)

        return (f"n{self.N}c{self.C}h{self.H}w{self.W}-k{self.K}f{self.kh}x{self.kw}-s{s(self.stride)}"
                f"-p{s(self.padding)}-d{s(self.dilation)}-g{self.groups}")

    @property
    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def __str__(self):
        return self.id


def _case(N, C, H, W, K, kh, kw, s=1, p=0, d=1, g=1):
    return ConvCase(N, C, H, W, K, kh, kw, s, p, d, g)


# Each line moves one dimension to an edge; together they cover kernels 1..7 (square and
# not), stride 1..3, every padding form, dilation 1..3, groups through depthwise, batch,
# 1x1 and 1xW images, kernels larger than the image, and channel counts / output widths
# below, at, above and at multiples of the SIMD widths (8 floats AVX2, 16 AVX-512).
CONV_CASES = [
    # kernel sizes 1..7, square
    _case(1, 3, 8, 8, 4, 1, 1),
    _case(2, 3, 9, 9, 4, 2, 2),
    _case(2, 4, 10, 11, 5, 3, 3, 1, 1),
    _case(1, 3, 9, 12, 4, 4, 4),
    _case(1, 2, 11, 10, 3, 5, 5, 1, 2),
    _case(1, 2, 12, 13, 3, 6, 6),
    _case(2, 3, 13, 9, 2, 7, 7, 1, 3),
    # non-square kernels
    _case(1, 3, 9, 10, 4, 1, 3, 1, (0, 1)),
    _case(1, 3, 10, 9, 4, 3, 1, 1, (1, 0)),
    _case(2, 2, 11, 12, 3, 2, 5),
    _case(1, 2, 12, 8, 3, 7, 2, 1, (3, 1)),
    _case(1, 4, 6, 17, 2, 1, 7, 1, (0, 3)),
    # stride
    _case(2, 3, 11, 11, 4, 3, 3, 2, 1),
    _case(1, 3, 12, 13, 4, 3, 3, 3, 1),
    _case(1, 2, 10, 9, 3, 3, 3, (1, 2), 1),
    _case(1, 2, 13, 10, 3, 5, 3, (3, 2), (2, 1)),
    _case(2, 3, 9, 9, 4, 1, 1, 2),                   # 1x1 downsampling shortcut
    _case(1, 3, 16, 16, 8, 7, 7, 2, 3),              # a ResNet stem, small
    _case(1, 2, 8, 8, 3, 2, 2, 2),                   # stride == kernel
    _case(1, 2, 10, 10, 3, 2, 2, 3),                 # stride > kernel: skipped pixels
    # padding: 'same' (odd/even kernels, strides), 'valid', pairs, asymmetric 4-tuples
    _case(1, 3, 9, 10, 4, 3, 3, 1, "same"),
    _case(1, 3, 9, 10, 4, 4, 4, 1, "same"),          # even kernel: the extra pixel bottom/right
    _case(2, 3, 11, 9, 4, 3, 3, 2, "same"),
    _case(1, 2, 10, 13, 3, 3, 3, 3, "same", 2),
    _case(1, 2, 8, 9, 3, 2, 5, 1, "SAME"),
    _case(1, 3, 10, 10, 4, 3, 3, 1, "valid"),
    _case(1, 2, 9, 9, 3, 4, 4, 2, "valid"),
    _case(1, 3, 8, 9, 4, 3, 3, 1, (0, 2, 1, 0)),
    _case(2, 2, 7, 7, 3, 3, 3, 2, (2, 0, 0, 3)),
    _case(1, 2, 5, 5, 2, 3, 3, 1, 4),                # padding wider than the kernel: border outputs = bias
    _case(1, 2, 6, 7, 3, 3, 5, 1, (1, 2)),
    # dilation
    _case(1, 3, 12, 12, 4, 3, 3, 1, 2, 2),
    _case(1, 2, 14, 13, 3, 3, 3, 1, 3, 3),
    _case(1, 2, 13, 15, 3, 3, 3, 2, 2, (2, 3)),
    _case(2, 2, 9, 9, 3, 2, 2, 1, 0, 3),
    _case(1, 2, 16, 12, 3, 5, 2, 1, "same", (3, 2)),
    _case(1, 2, 12, 12, 3, 3, 3, 3, 0, 3),
    # groups, depthwise (groups == C, multiplier 1 and 2)
    _case(2, 4, 8, 9, 6, 3, 3, 1, 1, 1, 2),
    _case(1, 6, 7, 8, 6, 3, 3, 2, 1, 1, 3),
    _case(1, 8, 9, 7, 4, 3, 3, 1, 0, 1, 4),
    _case(1, 6, 11, 10, 9, 3, 3, 2, 2, 2, 3),
    _case(1, 4, 6, 6, 2, 3, 3, 1, 1, 1, 2),          # K < C
    _case(2, 8, 9, 10, 8, 3, 3, 1, 1, 1, 8),
    _case(1, 5, 9, 9, 10, 3, 3, 1, 1, 1, 5),
    _case(1, 16, 13, 13, 16, 3, 3, 2, 1, 1, 16),
    _case(1, 3, 12, 11, 6, 5, 5, 1, "same", 2, 3),
    _case(1, 17, 10, 9, 17, 7, 7, 2, 3, 1, 17),
    _case(1, 32, 7, 9, 32, 3, 3, 1, 1, 1, 32),
    _case(1, 33, 6, 7, 66, 3, 3, (1, 2), 1, 1, 33),
    _case(1, 15, 5, 17, 15, 3, 3, 1, 1, 1, 15),
    _case(1, 16, 4, 16, 16, 5, 5, 1, 2, 1, 16),
    _case(1, 64, 4, 9, 64, 3, 3, 1, 1, 1, 64),
    _case(2, 31, 3, 8, 62, 3, 3, 2, 1, 1, 31),
    _case(1, 1, 8, 8, 3, 3, 3, 1, 1),                # one channel: groups == C == 1 is dense
    _case(2, 5, 6, 7, 1, 3, 3, 1, 1),                # one output channel
    _case(1, 1, 5, 5, 1, 3, 3),                      # one channel in, one out
    # batch
    _case(3, 2, 7, 7, 3, 3, 3, 1, 1),
    _case(4, 4, 5, 6, 4, 3, 3, 2, 1, 1, 2),
    # tiny images, kernels larger than the image (with padding)
    _case(2, 3, 1, 1, 4, 1, 1),
    _case(1, 3, 1, 1, 4, 3, 3, 1, 1),
    _case(1, 2, 1, 1, 3, 5, 5, 2, "same"),
    _case(1, 4, 1, 1, 8, 3, 3, 1, 1, 1, 4),
    _case(1, 2, 1, 17, 3, 1, 3, 1, (0, 1)),
    _case(1, 2, 17, 1, 3, 3, 1, 1, (1, 0)),
    _case(1, 2, 3, 3, 2, 5, 5, 1, 2),
    _case(1, 2, 2, 2, 3, 7, 7, 1, 3),
    _case(2, 2, 4, 5, 2, 7, 7, 2, 3),
    _case(1, 2, 4, 4, 2, 3, 3, 1, 3, 3),             # dilated extent 7 on a 4x4 image
    _case(1, 2, 2, 2, 2, 1, 1, 3),
    _case(1, 3, 23, 29, 5, 3, 3, 1, 1),
    # tile edges: output width and channels below / at / above 8, 16, 32, 64
    _case(1, 8, 4, 8, 8, 3, 3, 1, 1),
    _case(1, 7, 4, 7, 9, 3, 3, 1, 1),
    _case(1, 9, 3, 9, 7, 3, 3, 1, 1),
    _case(1, 16, 3, 16, 16, 3, 3, 1, 1),
    _case(1, 15, 3, 15, 17, 3, 3, 1, 1),
    _case(1, 17, 3, 17, 15, 3, 3, 1, 1),
    _case(1, 32, 2, 32, 32, 1, 1),
    _case(1, 31, 2, 31, 33, 1, 1),
    _case(1, 33, 2, 33, 31, 1, 1),
    _case(1, 64, 3, 5, 64, 3, 3, 1, 1),
    _case(1, 48, 3, 6, 96, 1, 1),
    _case(2, 24, 5, 13, 40, 3, 3, 1, 1),
    _case(1, 3, 6, 48, 32, 3, 3, 1, 1),
    _case(1, 16, 2, 65, 16, 1, 1),
    _case(1, 17, 5, 14, 6, 3, 3, 2, 1),
    _case(1, 8, 6, 11, 32, 6, 6),
]


def random_conv_cases(n: int, seed: int) -> list:
    """n valid random cases (sizes small enough to keep the reference fast)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        groups = int(rng.choice([1, 1, 2, 3]))
        kh, kw = (int(v) for v in rng.integers(1, 8, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        padding = [int(rng.integers(0, 4)), tuple(int(v) for v in rng.integers(0, 4, 2)),
                   tuple(int(v) for v in rng.integers(0, 4, 4)), "same", "valid"][rng.integers(0, 5)]
        H, W = (int(v) for v in rng.integers(1, 15, 2))
        case = ConvCase(int(rng.integers(1, 4)), groups * int(rng.integers(1, 5)), H, W,
                        groups * int(rng.integers(1, 5)), kh, kw, stride, padding, dilation, groups)
        try:
            ref.conv2d_output_size(H, W, (kh, kw), stride, padding, dilation)
        except ValueError:
            continue  # kernel larger than the padded input
        out.append(case)
    return out


# The conv2d grid every algorithm is tested on (tests/test_conv2d.py; Winograd: the cases
# it covers, tests/test_winograd.py): the chosen edges plus a seeded random sample.
CONV_GRID = CONV_CASES + random_conv_cases(16, seed=2024)


# ------------------------------------------------------------------------ inputs and truth
def _rng(case) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(case.id.encode()))


def _read_only(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


@lru_cache(maxsize=None)
def conv_inputs(case: ConvCase, dtype) -> tuple:
    """(x, w, b, grad_y) of a case in ``dtype``: standard normal, the same values for both
    dtypes up to rounding, read-only."""
    rng = _rng(case)
    OH, OW = ref.conv2d_output_size(case.H, case.W, (case.kh, case.kw), case.stride, case.padding, case.dilation)
    shapes = [(case.N, case.C, case.H, case.W), (case.K, case.C // case.groups, case.kh, case.kw), (case.K,),
              (case.N, case.K, OH, OW)]
    return _read_only(*(rng.standard_normal(s).astype(dtype) for s in shapes))


@lru_cache(maxsize=None)
def conv_reference(case: ConvCase, dtype) -> tuple:
    """(y without bias, grad_x, grad_w, grad_b) in float64, from conv_inputs(case, dtype)."""
    x, w, _, gy = (a.astype(np.float64) for a in conv_inputs(case, dtype))
    y = ref.conv2d(x, w, None, **case.kwargs)
    return _read_only(y, *ref.conv2d_backward(gy, x, w, **case.kwargs))


# ------------------------------------------------------------------------ fixtures
def param_fixture(name: str, values, ids=None):
    """A fixture ``name`` taking each of ``values`` in turn; in a test module:
    ``dtype = param_fixture("dtype", DTYPES, ids=dtype_id)``."""

    @pytest.fixture(name=name, params=list(values), ids=ids)
    def fixture(request):
        return request.param

    return fixture


# ------------------------------------------------------------------------ algorithms and ISAs
ISA_ORDER = ("scalar", "avx2", "avx512")
# Every ISA up to the one active at start-up (the CPU's best, or CONVKIT_ISA's cap).
ISAS = ISA_ORDER[:ISA_ORDER.index(convkit.get_isa()) + 1]


@contextlib.contextmanager
def forced_isa(isa: str):
    """Run the block with the kernels capped at ``isa``; the previous ISA comes back after."""
    before = convkit.get_isa()
    convkit.set_isa(isa)
    try:
        assert convkit.get_isa() == isa
        yield
    finally:
        convkit.set_isa(before)


def cpu_algos(*primitives) -> list:
    """CPU algorithms that register every one of ``primitives`` for every call, in
    registration order. An algorithm that covers only some shapes (a row with ``covers``,
    e.g. Winograd's 3x3 stride 1) is left out of these grids, which would mostly ask it for
    calls it refuses; tests/test_winograd.py runs it on the grid's cases it covers."""
    full = [r for r in convkit.implementations("cpu") if r.covers is None]
    rows = {(r.algo, r.primitive) for r in full}
    names = dict.fromkeys(r.algo for r in full)
    return [a for a in names if all((a, p) in rows for p in primitives)]


def algo_fixture(name: str, *primitives):
    """A fixture ``name`` that yields each CPU algo implementing ``primitives`` while the
    kernels are forced to each ISA in ISAS (the ISA-free NumPy reference: once).

    In a test module: ``algo = algo_fixture("algo", "conv2d_forward")``.
    """
    params = [pytest.param((a, isa), id=f"{a}-{isa}") for a in cpu_algos(*primitives)
              for isa in (ISAS[-1:] if a == "reference" else ISAS)]

    @pytest.fixture(name=name, params=params)
    def fixture(request):
        algo, isa = request.param
        with forced_isa(isa):
            yield algo

    return fixture
