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
        return Choice(candidates[0], "the only CUDA implementation family")
    for algo in _PREFERENCE:
        if algo in candidates:
            return Choice(algo, f"{algo!r} is the fastest available implementation of {primitive} in general")
    return Choice(candidates[0], "the only implementation registered")
