"""Test-wide set-up.

Numba's CUDA simulator must be switched on before Numba is first imported anywhere in
the process, so it is set here, the first file pytest loads. With a real GPU, run with
CONVKIT_TEST_REAL_GPU=1 to test the kernels on the device instead.
"""
import os

if not os.environ.get("CONVKIT_TEST_REAL_GPU"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# Hypothesis profiles (tests/test_properties.py and the other reliability tests): "ci",
# the default, is derandomized and small enough for the whole suite's time budget;
# `--hypothesis-profile=long` (or HYPOTHESIS_PROFILE=long) searches far more cases.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", derandomize=True, max_examples=40, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
