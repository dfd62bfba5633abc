"""The one timer every benchmark uses: interleaved blocks, warm-up discarded, median.

Implementations are compared side by side in one process, in alternating blocks of
back-to-back calls (A A A, B B B, A A A, ...). The first call of each block wakes that
library's threads (PyTorch's OpenMP workers, convkit's pool, OpenBLAS's) and is not
counted: single calls with pauses between them measure thread wake-up, not the kernel.
A block's time is the mean of its counted calls; the result is the median over blocks,
so a block disturbed by another process on the shared machine does not move it.
"""
from __future__ import annotations

import gc
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

MIN_BLOCKS = 7  # the project's standard: a median of at least 7 blocks


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


def interleaved(fns: dict, calls: dict, blocks: dict, clock=time.perf_counter) -> dict:
    """Time each fns[name] in `blocks[name]` blocks of 1 + calls[name] calls, interleaved
    in the order given; the first call of each block is not counted. Returns {name: Timed}.
    clock=time.thread_time times the calling thread's CPU, immune to other users' jobs
    (meaningful for one-thread runs only)."""
    per_block = {name: [] for name in fns}
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection inside one block would be charged to whoever ran then
    try:
        for b in range(max(blocks.values(), default=0)):
            for name, fn in fns.items():
                if b >= blocks[name]:
                    continue
                fn()  # wakes the library's threads: not counted
                n = calls[name]
                start = clock()
                for _ in range(n):
                    fn()
                per_block[name].append((clock() - start) / n)
    finally:
        if gc_was_on:
            gc.enable()
    return {name: Timed(tuple(t), calls[name]) for name, t in per_block.items()}


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
