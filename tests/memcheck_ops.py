"""The workload of the valgrind memcheck run (README, "Checking builds"): every public op
once with every compiled CPU algorithm, both layouts, both dtypes and every instruction
set valgrind can run (it has no AVX-512, so the CPU it shows the kernels stops at AVX2),
results checked against the reference, then calls the compiled code must refuse.

Not a pytest file (valgrind makes it minutes long); exits non-zero on a wrong result.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import convkit  # noqa: E402
from convkit._registry import NotCovered  # noqa: E402
from helpers import cpu_algos  # noqa: E402
from public_ops import OPS, to_nchw, to_nhwc  # noqa: E402
from test_leaks import _refused_call  # noqa: E402


def run_all() -> int:
    checked = 0
    for isa in ("scalar", "avx2", "avx512"):
        convkit.set_isa(isa)
        if convkit.get_isa() != isa:
            continue  # capped by the (possibly emulated) CPU
        for op in OPS:
            for dtype in (np.float32, np.float64):
                arrays = op.arrays(dtype)
                want = op.run_reference(arrays)
                tol = 1e-4 if dtype == np.float32 else 1e-10
                for algo in cpu_algos(*op.primitives):
                    if algo == "reference":
                        continue
                    for layout in ("NCHW", "NHWC"):
                        args = [to_nhwc(a) if act and layout == "NHWC" else a for a, act in zip(arrays, op.activations)]
                        try:
                            got = op.run(args, algo=algo, layout=layout)
                        except NotCovered:  # an algorithm that computes only some shapes (Winograd)
                            continue
                        for g, w, act in zip(got, want, op.outputs):
                            g = to_nchw(g) if act and layout == "NHWC" else g
                            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{op.id} {algo} {layout} {isa}")
                        checked += 1
        print(f"{isa}: ok", flush=True)
    for row in convkit.implementations("cpu"):
        if row.algo != "reference":
            _refused_call(row)()
    return checked


if __name__ == "__main__":
    print(f"memcheck_ops: {run_all()} calls checked against the reference", flush=True)
