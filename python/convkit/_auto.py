"""algo="auto": which implementation runs for a call, and why.

The rules are a heuristic written from measurements (bench/RESULTS.md); each says why.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    algo: str
    reason: str


# Preference when no rule below applies: the hand-written direct kernels are the
# project's fastest path on every layer of the suite; im2col next; the NumPy reference
# only when nothing compiled is there (it is exact but slow).
_PREFERENCE = ("direct", "im2col", "reference")


def choose(primitive: str, geom, device: str, candidates: list) -> Choice:
    if device == "cuda":
        return _choose_cuda(primitive, geom, candidates)
    for algo in _PREFERENCE:
        if algo in candidates:
            return Choice(algo, f"{algo!r} is the fastest available implementation of {primitive} in general")
    return Choice(candidates[0], "the only implementation registered")


def _choose_cuda(primitive: str, geom, candidates: list) -> Choice:
    """Dense layers to the implicit GEMM, the rest to the direct kernels.

    From the kernels' cost models (no GPU has measured them yet): the GEMM's 4x4 register
    tile does 16 multiply-adds per 8 shared loads where the direct kernel does about one
    per load, but its 64-row tiles are mostly empty when a group has few channels
    (depthwise: one), where the direct kernels' shared input tile wins.
    """
    if "implicit_gemm" in candidates and primitive.startswith("conv2d") and geom is not None:
        if min(geom.C, geom.K) // geom.groups >= 16:
            return Choice("implicit_gemm", "dense layer (>= 16 channels per group in and out): the register-tiled "
                                           "GEMM reuses each loaded value 4 times")
    if "direct" in candidates:
        return Choice("direct", "few channels per group (depthwise, stems) or pooling: the direct kernels")
    return Choice(candidates[0], "the only CUDA implementation registered")
