"""The machine's peak, measured at the start of a run: the yardstick of "share of peak".

Compute: a large float32 matrix product through NumPy's BLAS (the best dense kernel the
machine is likely to have, so convolutions are judged against what its cores reach, not
against a datasheet). n = 1536 (7 GFLOP) is within a few per cent of OpenBLAS's large-size
speed and keeps the measurement well under a second on 2 cores. Memory: a large array copy, bytes read + written, the bound of the
pooling layers.
"""
from __future__ import annotations

import time

import numpy as np

from .timing import calls_per_block, interleaved


def _time(fn, blocks: int) -> float:
    """Seconds of the fastest block: a peak is what the machine can do, and on a shared
    machine the slower blocks measure the neighbours."""
    fn()  # first touch of the buffers, BLAS threads started
    start = time.perf_counter()
    fn()
    estimate = time.perf_counter() - start
    return interleaved({"peak": fn}, {"peak": calls_per_block(estimate, 0.05, cap=3)}, {"peak": blocks})["peak"].best


def matmul_gflops(n: int = 1536, blocks: int = 5) -> float:
    """GFLOP/s of an n x n x n float32 product (2 n^3 FLOPs) through NumPy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    return 2 * n**3 / _time(lambda: np.matmul(a, b, out=c), blocks) / 1e9


def copy_gbs(nbytes: int = 64 << 20, blocks: int = 5) -> float:
    """GB/s (read + written) of copying an nbytes float32 array: well past any cache."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    return 2 * nbytes / _time(lambda: np.copyto(dst, src), blocks) / 1e9
