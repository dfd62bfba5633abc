"""The one timer every benchmark uses: interleaved blocks, warm-up discarded, median.

Implementations are compared side by side in one process, in alternating blocks of
back-to-back calls (A A A, B B B, A A A, ...). The first call of each block wakes that
library's threads (PyTorch's OpenMP workers, convkit's pool, OpenBLAS's) and is not
counted: single calls with pauses between them measure thread wake-up, not the kernel.
A block's time is the mean of its counted calls; the result is the median over blocks,
so a block disturbed by another process on the shared machine does not move it.

Before each block the process settles (`settle`): the library timed just before leaves
its worker threads spin-waiting for its next call (PyTorch's OpenMP workers spin for
GOMP_SPINCOUNT, ~4-5 ms of CPU after each op here), and on a 2-core machine such a
spinner takes half a core from the next library's worker. convkit's 2-thread depthwise
calls ran at their 1-thread speed for the first ~5 ms of every block timed after PyTorch:
all of a 10-call block, and up to the median of a 50-call block (one forward read 45 or
88 GFLOP/s by the run). Neither library is slowed by its own threads in steady use.
"""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

MIN_BLOCKS = 7  # the project's standard: a median of at least 7 blocks


def settle(timeout: float = 0.05) -> bool:
    """Waits (up to `timeout` s) until no other thread of this process is runnable: the
    previous block's library has stopped spin-waiting. True when it settled. Outside Linux
    (no /proc) it sleeps 20 ms, a few times PyTorch's spin."""
    me, deadline = str(threading.get_native_id()), time.monotonic() + timeout
    try:
        while True:
            busy = False
            for tid in os.listdir("/proc/self/task"):
                if tid == me:
                    continue
                try:
                    with open(f"/proc/self/task/{tid}/stat") as f:
                        busy = f.read().rsplit(")", 1)[1].split()[0] == "R"
                except OSError:  # the thread ended
                    continue
                if busy:
                    break
            if not busy:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
    except OSError:
        time.sleep(0.02)
        return True


@dataclass(frozen=True)
class Timed:
    """Per-call seconds of each block of one implementation, and their median."""

    block_seconds: tuple
    calls_per_block: int

    @property
    def median(self) -> float:
        return statistics.median(self.block_seconds)

    @property
    def best(self) -> float:
        return min(self.block_seconds)

    @property
    def blocks(self) -> int:
        return len(self.block_seconds)


def calls_per_block(seconds_per_call: float, block_seconds: float, cap: int = 50) -> int:
    """Counted calls that fill about block_seconds (at least 1), so fast calls are timed over
    many repetitions and slow ones once."""
    return max(1, min(cap, int(block_seconds / max(seconds_per_call, 1e-7))))


def calibrate(fns: dict, block_seconds: float, clock=time.perf_counter, *, floor: int = 1, cap: int = 50,
              around=None, before=None) -> dict:
    """Counted calls per block of each fns[name] (calls_per_block, at least `floor`), from one
    timed call after a wake-up call, in the same conditions as interleaved's (around, before)."""
    calls = {}
    for name, fn in fns.items():
        with _within(around, name):
            _call(fn, before)
            calls[name] = max(floor, calls_per_block(_call(fn, before, clock), block_seconds, cap))
    return calls


def interleaved(fns: dict, calls: dict, blocks: dict, clock=time.perf_counter, *, around=None, before=None,
                each_round=None) -> dict:
    """Time each fns[name] in `blocks[name]` blocks of 1 + calls[name] calls, interleaved
    in the order given; the first call of each block is not counted. Returns {name: Timed}.
    clock=time.thread_time times the calling thread's CPU, immune to other users' jobs
    (meaningful for one-thread runs only).

    around(name): a context manager each block of fns[name] runs in (a mode or a thread
    count to switch), entered before its first call. before(): run untimed ahead of every
    call (new weights for a training step's measurement); the block is then timed call by
    call. each_round(): run before each round of blocks (waiting for a quiet machine)."""
    per_block = {name: [] for name in fns}
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection inside one block would be charged to whoever ran then
    try:
        for b in range(max(blocks.values(), default=0)):
            if each_round is not None:
                each_round()
            for name, fn in fns.items():
                if b >= blocks[name]:
                    continue
                with _within(around, name):
                    settle()  # the previous block's library has stopped spinning
                    _call(fn, before)  # wakes the library's threads: not counted
                    n = calls[name]
                    if before is None:
                        start = clock()
                        for _ in range(n):
                            fn()
                        spent = clock() - start
                    else:
                        spent = sum(_call(fn, before, clock) for _ in range(n))
                per_block[name].append(spent / n)
    finally:
        if gc_was_on:
            gc.enable()
    return {name: Timed(tuple(t), calls[name]) for name, t in per_block.items()}


def _within(around, name):
    return around(name) if around is not None else nullcontext()


def _call(fn, before, clock=None):
    """fn() after before() (if any); with a clock, the seconds fn() took."""
    if before is not None:
        before()
    if clock is None:
        fn()
        return None
    start = clock()
    fn()
    return clock() - start


@contextmanager
def same_threads(n: int, with_torch: bool):
    """Sets one thread count for convkit, PyTorch (when it takes part) and NumPy's BLAS
    (through threadpoolctl when it is installed; otherwise BLAS keeps its own setting,
    which the yielded description says). Restores the previous settings on exit."""
    import convkit

    before = convkit.get_num_threads()
    convkit.set_num_threads(n)
    settings = {"convkit": convkit.get_num_threads()}
    torch_before = None
    if with_torch:
        import torch

        torch_before = torch.get_num_threads()
        torch.set_num_threads(n)
        settings["torch"] = torch.get_num_threads()
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=n, user_api="blas")
        settings["numpy BLAS"] = n
    except ImportError:
        settings["numpy BLAS"] = "its own default (threadpoolctl not installed)"
    try:
        yield settings
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if torch_before is not None:
            import torch

            torch.set_num_threads(torch_before)
        convkit.set_num_threads(before)


def steady_heap() -> bool:
    """Keeps freed memory in the process (glibc mallopt; True when it applied): blocks up to
    256 MiB come from the heap, and the heap top is returned to the system only past 1 GiB.

    Every call of either library allocates its outputs; with glibc's defaults a process that
    holds little else gives the freed pages back at once and the next call faults them in
    again (PyTorch's NCHW depthwise forward measured 2.9 GFLOP/s instead of 40-60). A network
    in steady state reuses its freed memory, so the comparison scripts call this first and
    time the kernels, not page faults."""
    try:
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
