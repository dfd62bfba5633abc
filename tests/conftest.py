"""Test-wide set-up.

Numba's CUDA simulator must be switched on before Numba is first imported anywhere in
the process, so it is set here, the first file pytest loads. With a real GPU, run with
CONVKIT_TEST_REAL_GPU=1 to test the kernels on the device instead.
"""
import os

if not os.environ.get("CONVKIT_TEST_REAL_GPU"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
