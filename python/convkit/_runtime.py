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
    """Threads for every CPU kernel; n <= 0: all cores available.

    They are convkit's own pool, or PyTorch's OpenMP team once convkit.torch is imported
    (see convkit.torch.share_torch_threads); convkit never links OpenMP itself."""
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


# The im2col column buffer's cap (bytes). Above it the buffer covers a tile of output
# rows rather than the whole image; 256 MiB keeps a VGG-sized layer in one tile while
# bounding memory on any input.
_IM2COL_DEFAULT_MB = 256


def _im2col_limit_from_env() -> int:
    raw = os.environ.get("CONVKIT_IM2COL_BUFFER_MB", "")
    try:
        mb = float(raw) if raw else _IM2COL_DEFAULT_MB
    except ValueError:
        raise ValueError(f"CONVKIT_IM2COL_BUFFER_MB must be a number of MiB, got {raw!r}") from None
    if mb <= 0:
        raise ValueError(f"CONVKIT_IM2COL_BUFFER_MB must be > 0, got {raw!r}")
    return max(1, int(mb * 2**20))


_im2col_buffer_limit = _im2col_limit_from_env()


def set_im2col_buffer_limit(nbytes: int) -> None:
    """Cap (bytes) of algo="im2col"'s column buffer; larger layers are tiled over output rows.

    Default 256 MiB, or CONVKIT_IM2COL_BUFFER_MB. A tile holds at least one output row,
    so a cap below one row's columns still runs, with one-row tiles.
    """
    global _im2col_buffer_limit
    if not isinstance(nbytes, numbers.Integral) or isinstance(nbytes, bool):
        raise TypeError(f"nbytes must be an int, got {nbytes!r}")
    if nbytes <= 0:
        raise ValueError(f"nbytes must be > 0, got {nbytes}")
    _im2col_buffer_limit = int(nbytes)


def get_im2col_buffer_limit() -> int:
    return _im2col_buffer_limit
