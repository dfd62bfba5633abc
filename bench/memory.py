"""Peak memory of one call: what an implementation allocates while it runs.

Three measures, as none sees everything:
- traced: tracemalloc's peak over the call, above what was traced before it. It sees
  every Python and NumPy allocation (outputs included), not C++ or PyTorch buffers.
- rss: growth of the process's resident-set high-water mark over the call (the mark is
  reset first through /proc/self/clear_refs, Linux only). It sees C++ and PyTorch
  workspaces too, but not memory the allocator had already cached from earlier calls.
- output: the bytes of the arrays the call returns, a floor for any implementation
  (PyTorch's tensors are invisible to tracemalloc, and its allocator reuses memory).
The reported peak is the largest of the three.
"""
from __future__ import annotations

import re
import time
import tracemalloc
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryUse:
    traced: int
    rss: int | None  # None where the high-water mark cannot be reset
    output: int

    @property
    def peak(self) -> int:
        return max(self.traced, self.rss or 0, self.output)


def _status_kb(key: str):
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn):
    """Runs fn() once (best not its first call, which also counts one-time set-up such as
    library code paged in); returns (its result, seconds, MemoryUse)."""
    can_reset = _reset_high_water_mark()
    rss_before = _status_kb("VmRSS")
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    traced_before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    try:
        result = fn()
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1] - traced_before
    finally:
        if not was_tracing:
            tracemalloc.stop()
    rss = None
    high = _status_kb("VmHWM")
    if can_reset and rss_before is not None and high is not None:
        rss = max(0, high - rss_before) * 1024
    output = sum(getattr(r, "nbytes", 0) for r in (result if isinstance(result, tuple) else (result,)))
    return result, seconds, MemoryUse(traced, rss, output)
