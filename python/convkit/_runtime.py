"""Process-wide settings of the CPU kernels: threads and instruction set."""
from __future__ import annotations

import contextlib
import functools
import numbers
import os

_ISAS = ("scalar", "avx2", "avx512")


def _check_isa_env() -> None:
    # Checked before the C++ module reads it, so a typo is an error, not a silent default.
    isa = os.environ.get("CONVKIT_ISA", "")
    if isa and isa not in _ISAS:
        raise ValueError(f"CONVKIT_ISA must be one of {_ISAS}, got {isa!r}")


_check_isa_env()
from . import _cpu, _registry  # noqa: E402


def set_num_threads(n: int) -> None:
    """Threads for every CPU kernel; n <= 0: all cores available.

    They are convkit's own pool, or PyTorch's OpenMP team once convkit.torch is imported
    (see convkit.torch.share_torch_threads); convkit never links OpenMP itself.
    algo="im2col"'s matrix products run on SciPy's BLAS with this many threads too, set
    around each call and restored after it (see scipy_blas_threads): the BLAS keeps its
    own setting for the caller's SciPy work."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {n!r}")
    _cpu.set_num_threads(int(n))  # algo="auto"'s memo keys on the count (convkit._registry)


def get_num_threads() -> int:
    return _cpu.get_num_threads()


@functools.lru_cache(maxsize=1)
def scipy_blas() -> tuple:
    """threadpoolctl controllers of the BLAS that scipy.linalg.cython_blas (im2col's GEMM) calls.

    SciPy's wheels carry their own OpenBLAS (scipy.libs/), apart from NumPy's
    (numpy.libs/, 64-bit indices): then that one library, and NumPy's BLAS is untouched.
    A SciPy built against a shared system BLAS has no library of its own; then every BLAS
    in the process, which NumPy may share (the limit still lasts only for convkit's call).
    """
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library before threadpoolctl looks)
    from threadpoolctl import ThreadpoolController

    blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    root = os.path.dirname(os.path.dirname(os.path.realpath(scipy.__file__)))
    own = [lib for lib in blas if os.path.realpath(lib.filepath).startswith(
        (os.path.join(root, "scipy") + os.sep, os.path.join(root, "scipy.libs") + os.sep))]
    return tuple(own or blas)


@contextlib.contextmanager
def scipy_blas_threads():
    """Runs the block with SciPy's BLAS on get_num_threads() threads, then restores its own count.

    Per call rather than once in set_num_threads, so that the caller's own SciPy work
    keeps the BLAS setting it had (OPENBLAS_NUM_THREADS, threadpoolctl). The count is
    process-wide while the block runs: a SciPy call from another Python thread at that
    moment sees it too. Costs a few microseconds per call (ctypes get/set).
    """
    n = get_num_threads()
    changed = [(lib, lib.num_threads) for lib in scipy_blas()]
    changed = [(lib, before) for lib, before in changed if before != n]
    for lib, _ in changed:
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, before in changed:
            lib.set_num_threads(before)


def set_isa(name: str) -> None:
    """Cap the SIMD instruction set ("scalar", "avx2", "avx512") at or below what the CPU has."""
    if name not in _ISAS:
        raise ValueError(f"isa must be one of {_ISAS}, got {name!r}")
    _cpu.set_isa(name)
    _registry.forget_auto_choices()  # the calls' plans hold autotune's choice for the old ISA


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
