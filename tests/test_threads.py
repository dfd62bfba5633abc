"""Thread safety: concurrent calls from Python threads give the serial results bit for bit,
and every compiled primitive releases the GIL while it computes.

The ops and algorithms come from the registry (tests/op_cases.py), so a new
implementation is covered as soon as it registers.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import convkit
import op_cases as oc

THREADS = 8
REPEATS = 4
OPS = [op for op in oc.public_ops() if op in oc.OP_PRIMITIVES]


def _run_threads(target, n):
    """Runs target(i) in n threads started together; re-raises the first error."""
    errors = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 (reported in the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _same(got, want, what):
    for g, w in zip(got, want):
        assert (g is None) == (w is None), what
        if g is not None:
            assert g.dtype == w.dtype and g.shape == w.shape, what
            assert np.array_equal(g, w, equal_nan=True), f"{what}: differs from the serial result"


def _check_concurrent(cases, layouts):
    """Each case with each CPU algorithm, computed serially, then by THREADS threads at once
    (each thread a different share of the calls, REPEATS times): the same bits."""
    jobs = [(case, layout, algo) for case, layout in zip(cases, layouts) for algo in oc.cpu_algos(case.op)]
    serial = [case.call_raw(layout, algo) for case, layout, algo in jobs]

    def worker(t):
        for _ in range(REPEATS):
            for j in range(t, len(jobs), THREADS):
                case, layout, algo = jobs[j]
                _same(case.call_raw(layout, algo), serial[j], f"{case.describe()} {layout} {algo}")

    _run_threads(worker, THREADS)


_LAYOUTS = st.lists(st.sampled_from(oc.LAYOUTS), min_size=THREADS, max_size=THREADS)


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=2)
@given(data=st.data(), layouts=_LAYOUTS)
def test_concurrent_calls_of_one_op_match_serial(op, data, layouts):
    cases = data.draw(st.lists(oc.case_strategy(op), min_size=THREADS, max_size=THREADS))
    _check_concurrent(cases, layouts)


@settings(max_examples=4)
@given(cases=st.lists(st.sampled_from(OPS).flatmap(oc.case_strategy), min_size=THREADS, max_size=THREADS),
       layouts=_LAYOUTS)
def test_concurrent_calls_of_mixed_ops_match_serial(cases, layouts):
    _check_concurrent(cases, layouts)


@settings(max_examples=3)
@given(cases=st.lists(st.sampled_from(OPS).flatmap(oc.case_strategy), min_size=THREADS - 1,
                      max_size=THREADS - 1))
def test_thread_count_changes_during_calls(cases):
    """convkit.set_num_threads from one thread while seven others compute: no deadlock, no
    crash, and the results do not depend on the pool's size."""
    jobs = [(case, algo) for case in cases for algo in oc.cpu_algos(case.op)]
    serial = [case.call_raw("NCHW", algo) for case, algo in jobs]
    finished = []

    def worker(t):
        if t == THREADS - 1:  # the toggler, until every computing thread is done
            n = 0
            while len(finished) < THREADS - 1:
                convkit.set_num_threads(1 + n % 2)
                n += 1
            return
        try:
            for _ in range(REPEATS):
                for j in range(t, len(jobs), THREADS - 1):
                    case, algo = jobs[j]
                    _same(case.call_raw("NCHW", algo), serial[j], f"{case.describe()} {algo}")
        finally:
            finished.append(t)

    with oc.num_threads(convkit.get_num_threads()):
        _run_threads(worker, THREADS)


# ------------------------------------------------------------------------ GIL release
def _long_call(primitive, scale, dtype=np.float32):
    """A public-op call that runs the given primitive on work proportional to `scale`."""
    rng = np.random.default_rng(1)
    act = lambda c, h: rng.random((scale, c, h, h), dtype)  # noqa: E731
    x, w = act(16, 64), rng.random((16, 16, 3, 3), dtype)
    px = act(16, 128)
    idx = rng.integers(0, 128 * 128, px.shape)  # any in-range indices route the gradient
    calls = {
        "conv2d_forward": lambda algo: convkit.conv2d(x, w, padding=1, algo=algo),
        "conv2d_grad_input": lambda algo: convkit.conv_transpose2d(x, w, padding=1, algo=algo),
        "conv2d_grad_weight": lambda algo: convkit.conv2d_backward(x, x, w, padding=1, need_input=False,
                                                                    need_bias=False, algo=algo),
        "max_pool2d": lambda algo: convkit.max_pool2d(px, 3, 1, 1, algo=algo),
        "max_pool2d_backward": lambda algo: convkit.max_pool2d_backward(px, px, 3, 1, 1, indices=idx, algo=algo),
        "avg_pool2d": lambda algo: convkit.avg_pool2d(px, 3, 1, 1, algo=algo),
        "avg_pool2d_backward": lambda algo: convkit.avg_pool2d_backward(px, px, 3, 1, 1, algo=algo),
        "maxout2d": lambda algo: convkit.maxout2d(px, 4, algo=algo),
        "maxout2d_backward": lambda algo: convkit.maxout2d_backward(px[:, :4], px, 4, algo=algo),
    }
    return calls[primitive]


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _other_thread_ran_mid_call(call):
    """Runs call() while another Python thread counts; True if that thread left a timestamp
    more than a millisecond (and 5%) inside the call."""
    stamps, stop = [], threading.Event()

    def count():
        n = 0
        while not stop.is_set():
            n += 1
            if n % 16 == 0:
                stamps.append(time.perf_counter())

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.002)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        counter.join()
    q = max(1e-3, (t1 - t0) / 20)  # ten switch intervals (0.1 ms) or more at either end
    return any(t0 + q < s < t1 - q for s in stamps)


@pytest.mark.parametrize("row", [r for r in convkit.implementations("cpu") if r.algo != "reference"],
                         ids=lambda r: f"{r.primitive}-{r.algo}")
def test_gil_is_released_during_compute(row):
    """While one long call of the row runs, another Python thread keeps running: it leaves
    timestamps more than a millisecond (and 5%) inside the call. A call that held the GIL would let it run
    at most one switch interval (set to 0.1 ms here) at either end of a >= 40 ms call,
    never in its middle. The kernels run on one thread (convkit's pool and the BLAS) so a
    core stays free for the counter, and ten tries, so a busy machine's scheduler cannot
    fail it."""
    from threadpoolctl import threadpool_limits

    old_interval, old_threads = sys.getswitchinterval(), convkit.get_num_threads()
    sys.setswitchinterval(1e-4)
    convkit.set_num_threads(1)
    # BLAS on one thread for the whole test: idle OpenBLAS workers spin for ~30 ms after
    # a multi-threaded GEMM and would take the counter's core.
    limits = threadpool_limits(1)
    try:
        scale = 1
        call = _long_call(row.primitive, scale)
        call(row.algo)  # warm-up: a first call's one-off costs would pass for a long compute
        while _timed(lambda: call(row.algo)) < 0.04 and scale < 256:
            scale *= 2
            call = _long_call(row.primitive, scale)
            call(row.algo)
        ran = any(_other_thread_ran_mid_call(lambda: call(row.algo)) for _ in range(10))
    finally:
        limits.restore_original_limits()
        sys.setswitchinterval(old_interval)
        convkit.set_num_threads(old_threads)
    assert ran, f"{row.primitive}/{row.algo}: no other Python thread ran during its compute (scale {scale})"


FORK_SCRIPT = """
import os, sys, numpy as np, convkit
if sys.argv[1] == "torch":
    import convkit.torch
    assert convkit.torch.share_torch_threads() or "OpenMP" not in __import__("torch").__config__.parallel_info()
convkit.set_num_threads(2)
x = np.random.default_rng(0).standard_normal((2, 16, 24, 24)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
y = convkit.conv2d(x, w, padding=1)  # the pool's (or the OpenMP team's) threads now exist
pid = os.fork()
if pid == 0:
    ok = convkit.get_num_threads() == 2 and np.array_equal(convkit.conv2d(x, w, padding=1), y)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
@pytest.mark.parametrize("threads", ["convkit", "torch"])
def test_a_forked_child_gets_a_working_pool_of_the_same_size(threads):
    """multiprocessing's fork and DataLoader workers: the child has none of the parent's
    pool threads (nor PyTorch's OpenMP team); it must neither hang nor lose its thread count."""
    import subprocess

    if threads == "torch":
        pytest.importorskip("torch")
    run = subprocess.run([sys.executable, "-c", FORK_SCRIPT, threads], timeout=60, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
