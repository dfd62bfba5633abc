"""How close a result must be to the float64 reference: the project's standard.

float32 within rtol 1e-4 and atol 1e-4 scaled by the largest reference value (long
reductions round more), float64 within 1e-10 likewise; integer results (max-pool
indices) exactly.
"""
from __future__ import annotations

import numpy as np

TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def compare(got: tuple, want: tuple, dtype=np.float32) -> tuple:
    """(passes, worst error in units of the tolerance, what differs) for results of `dtype`."""
    if len(got) != len(want):
        return False, None, f"{len(got)} results, the reference gives {len(want)}"
    tol = TOLERANCE[np.dtype(dtype)]
    worst = 0.0
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return False, None, f"shape {g.shape}, the reference gives {w.shape}"
        if w.dtype.kind in "iu":
            if not np.array_equal(g, w):
                return False, float("inf"), f"{int(np.count_nonzero(g != w))} of {w.size} indices differ"
            continue
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        err = np.abs(g64 - w64) / (tol * max(1.0, float(np.abs(w64).max(initial=0.0))) + tol * np.abs(w64))
        err[np.isnan(err) & ~np.isnan(w64)] = np.inf  # a NaN where the reference has a number
        worst = max(worst, float(np.nanmax(err, initial=0.0)))
    if worst <= 1.0:
        return True, worst, ""
    return False, worst, f"off by {worst:.3g}x the tolerance (rtol {tol:g}, atol {tol:g}*max|ref|)"
