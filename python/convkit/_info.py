"""convkit.info(): what this build is and what it found on this machine."""
from __future__ import annotations

import os
import platform
import sys

import numpy as np

from . import _cpu, _registry
from ._version import __version__


def _cuda_status() -> tuple:
    try:
        import numba
    except ImportError:
        return "not installed (pip install 'convkit[cuda]')", "unavailable: Numba is not installed"
    try:
        from .cuda import device_error, device_name

        reason = device_error()
        return numba.__version__, f"no ({reason})" if reason else f"yes: {device_name()}"
    except Exception as exc:  # a broken driver or a half-installed convkit.cuda must not break info()
        return numba.__version__, f"no ({exc})"


def _im2col_blas() -> str:
    """The BLAS algo="im2col" multiplies with, and its threads inside and outside convkit's calls."""
    try:
        from ._runtime import get_num_threads, scipy_blas

        libs = scipy_blas()
    except Exception as exc:  # no SciPy or threadpoolctl: im2col is unavailable anyway
        return f"unavailable ({exc})"
    if not libs:
        return "not found by threadpoolctl"
    return "; ".join(f"{lib.internal_api} {lib.version} ({os.path.basename(lib.filepath)}): "
                     f"{get_num_threads()} threads in convkit's calls, {lib.num_threads} outside them"
                     for lib in libs)


def info_dict() -> dict:
    numba_version, cuda_device = _cuda_status()
    return {
        "convkit": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "build": f"{_cpu.build_type}, {_cpu.compiler}, portable core + per-file ISA kernels (no -march=native)",
        "cpu features": _cpu.cpu_features() or "(none of the x86 SIMD features)",
        "isa detected": _cpu.detected_isa(),
        "isa in use": _cpu.active_isa(),
        "threads": _cpu.get_num_threads(),
        "im2col blas": _im2col_blas(),
        "numba": numba_version,
        "cuda device": cuda_device,
        "cpu algorithms": ", ".join(sorted({i.algo for i in _registry.implementations("cpu")})),
        "cuda algorithms": ", ".join(sorted({i.algo for i in _registry.implementations("cuda")})) or "none",
        "unavailable": "; ".join(f"{m}: {r}" for dev in _registry.DEVICES
                                 for m, r in _registry.unavailable(dev).items()) or "nothing",
    }


def info(file=None) -> None:
    """Print the version, build flags, CPU features, ISA in use, threads (convkit's and
    im2col's BLAS) and CUDA status."""
    d = info_dict()
    width = max(len(k) for k in d)
    for key, value in d.items():
        print(f"{key:<{width}} : {value}", file=file or sys.stdout)
