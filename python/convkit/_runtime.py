"""Process-wide settings of the CPU kernels: threads and instruction set."""
from __future__ import annotations

import numbers
import os

_ISAS = ("scalar", "avx2", "avx512")


def _check_isa_env() -> None:
    # Checked before the C++ module reads it, so a typo is an error, not a silent default.
    isa = os.environ.get("CONVKIT_ISA", "")
    if isa and isa not in _ISAS:
        raise ValueError(f"CONVKIT_ISA must be one of {_ISAS}, got {isa!r}")


_check_isa_env()
from . import _cpu  # noqa: E402


def set_num_threads(n: int) -> None:
    """Threads for every CPU kernel (convkit's own pool, never OpenMP); n <= 0: all cores available."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {n!r}")
    _cpu.set_num_threads(int(n))


def get_num_threads() -> int:
    return _cpu.get_num_threads()


def set_isa(name: str) -> None:
    """Cap the SIMD instruction set ("scalar", "avx2", "avx512") at or below what the CPU has."""
    if name not in _ISAS:
        raise ValueError(f"isa must be one of {_ISAS}, got {name!r}")
    _cpu.set_isa(name)


def get_isa() -> str:
    return _cpu.active_isa()
