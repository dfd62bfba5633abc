"""Compile every kernel for a real GPU, without one: `python -m convkit.cuda.check_ptx`.

Numba's simulator runs kernels as Python, so it accepts code the CUDA target rejects
(non-constant shared-array shapes, some builtins) and never shows float64 arithmetic
leaking into a float32 kernel or an accumulator demoted to local memory. This compiles
each kernel with the default tiles to PTX for sm_80 (needs libNVVM, e.g. `pip install
nvidia-cuda-nvcc-cu12`; no GPU, no driver) and, when ptxas is found beside it, reports
registers, stack frame and shared memory. Exit status 1 if a float32 kernel holds a
float64 instruction. Run it without NUMBA_ENABLE_CUDASIM.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np
from numba import cuda, types

CC = (8, 0)


def _allow_compiling_without_a_device():
    """Device functions ask the current device for its compute capability; answer CC."""
    import numba.cuda.dispatcher as dispatcher

    class Device:
        compute_capability = CC

    dispatcher.get_current_device = lambda: Device()


def _ptxas():
    try:
        import nvidia.cuda_nvcc

        found = Path(nvidia.cuda_nvcc.__path__[0]) / "bin" / "ptxas"
        if found.exists():
            return str(found)
    except ImportError:
        pass
    return shutil.which("ptxas")


def _kernels():
    """(name, dtype, dispatcher, argument types) for every kernel, default tiles."""
    from . import conv_direct, conv_grad_weight_direct, conv_igemm, elementwise, pool, reduce
    from .conv_geometry import ConvGeo
    from .pool import PoolGeo

    cg = numba.typeof(ConvGeo(*[1] * len(ConvGeo._fields)))
    pg = numba.typeof(PoolGeo(*[1] * len(PoolGeo._fields)))
    dg = numba.typeof((1,) * 10)
    i64 = types.Array(types.int64, 4, "C")
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        a = {n: types.Array(numba.from_dtype(dtype), n, "C") for n in (1, 2, 3, 4)}
        for transposed in (False, True):
            yield (f"direct transposed={transposed}", dtype,
                   conv_direct.build(dtype, transposed, 3, 3, 1, 1, 1, 1, 16, 8, 4), (a[4], a[4], a[1], a[4], dg))
        for direction in conv_igemm.DIRECTIONS:
            out = a[3] if direction == "grad_weight" else a[4]
            yield (f"igemm {direction}", dtype, conv_igemm.build(dtype, direction, 64, 64, 8, 4, 4),
                   (a[4], a[4], out, a[1], cg))
        yield "grad_weight direct", dtype, conv_grad_weight_direct.build(dtype, 3, 3, 256), (a[4], a[4], a[3], cg)
        pools = pool.build(dtype)
        yield "max_pool", dtype, pools["max_pool"], (a[4], a[4], i64, pg)
        yield "max_pool_backward", dtype, pools["max_pool_backward"], (a[4], i64, a[4], pg)
        yield "avg_pool", dtype, pools["avg_pool"], (a[4], a[4], pg)
        yield "avg_pool_backward", dtype, pools["avg_pool_backward"], (a[4], a[4], pg)
        yield "channel_sum", dtype, reduce._build_channel_sum(dtype, 256), (a[4], types.int64, types.int64, a[2])
        yield "sum_splits", dtype, reduce._sum_splits, (a[2], a[1])
        yield "copy_window", dtype, elementwise._copy_window, (types.Array(a[4].dtype, 4, "A"), a[4])
        yield "add_channel_bias", dtype, elementwise._add_channel_bias, (a[4], a[1], types.int64)


def _resources(ptxas, ptx: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        # NVVM may be newer than ptxas: the PTX ISA version is the only thing they disagree on
        src.write_text(re.sub(r"^\.version .*$", "", ptx, count=1, flags=re.M).replace(
            "\n.target", "\n.version 8.0\n.target", 1))
        log = subprocess.run([ptxas, f"-arch=sm_{CC[0]}{CC[1]}", "-v", str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True).stderr
    found = re.findall(r"(\d+) bytes stack frame|Used (\d+) registers|(\d+) bytes smem", log)
    stack, regs, smem = (next((f[i] for f in found if f[i]), "0") for i in range(3))
    return f"{regs:>4} registers, {stack:>4} B stack, {smem:>6} B shared" if found else log.strip()[-120:]


def main() -> int:
    if numba.config.ENABLE_CUDASIM:
        print("unset NUMBA_ENABLE_CUDASIM: this compiles for the real CUDA target", file=sys.stderr)
        return 2
    _allow_compiling_without_a_device()
    ptxas = _ptxas()
    bad = 0
    for name, dtype, kernel, sig in _kernels():
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, device=False, cc=CC)
        f64 = sorted(set(re.findall(r"\b[\w.]+\.f64\b", ptx))) if dtype == np.float32 else []
        bad += bool(f64)
        usage = _resources(ptxas, ptx) if ptxas else "(no ptxas)"
        print(f"{name:26s} {dtype.name:8s} {usage}" + (f"  FLOAT64 IN A FLOAT32 KERNEL: {f64}" if f64 else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
