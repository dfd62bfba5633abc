"""`python -m convkit info`, CONVKIT_ISA, and the process-wide settings (ISA, threads)."""
import os
import re
import subprocess
import sys

import pytest

import convkit
from helpers import ISA_ORDER, ISAS


def run_python(args, tmp_path, **env):
    """A fresh interpreter (the ISA is read once, at import), outside the source tree."""
    base = {k: v for k, v in os.environ.items() if k != "CONVKIT_ISA"}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env={**base, **env}, capture_output=True,
                          text=True, timeout=300)


def test_python_m_convkit_info(tmp_path):
    out = run_python(["-m", "convkit", "info"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^convkit\s*: {re.escape(convkit.__version__)}$", out.stdout, re.M), out.stdout
    detected = convkit._cpu.detected_isa()
    assert re.search(rf"^isa detected\s*: {detected}$", out.stdout, re.M), out.stdout
    assert re.search(rf"^isa in use\s*: {detected}$", out.stdout, re.M), out.stdout
    for key in ("build", "cpu features", "threads", "numba", "cuda device", "cpu algorithms"):
        assert re.search(rf"^{key}\s*: \S", out.stdout, re.M), f"{key} missing:\n{out.stdout}"
    threads = int(re.search(r"^threads\s*: (\d+)$", out.stdout, re.M).group(1))
    if "im2col" in convkit._registry.algos("conv2d_forward", "cpu"):
        assert re.search(rf"^im2col blas\s*: .*: {threads} threads in convkit's calls", out.stdout, re.M), out.stdout


@pytest.mark.parametrize("isa", ISAS)
def test_convkit_isa_caps_the_isa(tmp_path, isa):
    out = run_python(["-c", "import convkit; print(convkit.get_isa())"], tmp_path, CONVKIT_ISA=isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_convkit_isa_above_the_cpu_is_capped_at_the_cpu(tmp_path):
    out = run_python(["-c", "import convkit; print(convkit.get_isa())"], tmp_path, CONVKIT_ISA="avx512")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == convkit._cpu.detected_isa()


def test_bad_convkit_isa_is_a_value_error_on_import(tmp_path):
    out = run_python(["-c", "import convkit"], tmp_path, CONVKIT_ISA="avx9000")
    assert out.returncode != 0
    assert "ValueError: CONVKIT_ISA must be one of ('scalar', 'avx2', 'avx512'), got 'avx9000'" in out.stderr


def test_info_function(capsys):
    convkit.info()
    printed = capsys.readouterr().out
    assert convkit.__version__ in printed and "isa in use" in printed


def test_set_isa():
    before = convkit.get_isa()
    try:
        for isa in ISA_ORDER:  # a request above the CPU is capped at the CPU's best
            convkit.set_isa(isa)
            want = min(ISA_ORDER.index(isa), ISA_ORDER.index(convkit._cpu.detected_isa()))
            assert convkit.get_isa() == ISA_ORDER[want]
    finally:
        convkit.set_isa(before)
    with pytest.raises(ValueError, match=r"isa must be one of \('scalar', 'avx2', 'avx512'\), got 'sse'"):
        convkit.set_isa("sse")


def test_set_num_threads():
    before = convkit.get_num_threads()
    try:
        convkit.set_num_threads(1)
        assert convkit.get_num_threads() == 1
        convkit.set_num_threads(3)
        assert convkit.get_num_threads() == 3
        convkit.set_num_threads(0)  # all the cores this process may use
        assert convkit.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        convkit.set_num_threads(before)
    for bad in (2.0, "2", True, None):
        with pytest.raises(TypeError, match="n must be an int"):
            convkit.set_num_threads(bad)


def test_resizing_the_pool_between_jobs_never_hangs(tmp_path):
    """Regression: a worker created by set_num_threads took the last finished job for a
    new one, counted itself done twice and left the caller waiting forever (in about
    half of the runs of this loop)."""
    script = ("import numpy as np\nfrom convkit import _cpu, set_num_threads\n"
              "x, w = np.ones((1, 3, 4, 4)), np.ones((3, 3, 1, 1))\n"
              "for i in range(20000):\n"
              "    set_num_threads(2 + i % 2)\n"
              "    _cpu.conv2d_forward(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1)\n"
              "print('done')")
    out = run_python(["-c", script], tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
