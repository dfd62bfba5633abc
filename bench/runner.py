"""Runs the suite: per layer and direction, every implementation checked once, then timed.

For each (layer, direction) the runner takes every CPU algorithm the registry has for the
case's primitives (or those --algo names), the NumPy reference and, on request, PyTorch.
Each is called once and its result compared with the reference's (a mismatch or an
exception is a failed row, shown in the table, never dropped), called once more under
the memory probe, then all are timed together by the interleaved block timer.

The reference is a baseline, exact and slow: it is timed over fewer blocks of one call
(Settings.reference_blocks) and the report says so.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

import numpy as np

import convkit
from convkit._registry import NotCovered

from . import memory, ops, peak
from .progress import Progress
from .tolerance import compare
from .timing import MIN_BLOCKS, calls_per_block, interleaved, same_threads

REFERENCE, TORCH = "reference", "torch"


@dataclass
class Settings:
    directions: tuple = ops.DIRECTIONS
    algos: tuple | None = None  # None: every registered algorithm
    against_torch: bool = False
    repeat: int = 10  # blocks per implementation
    threads: int | None = None  # None: convkit's current setting (the cores available)
    block_seconds: float = 0.05  # counted calls per block fill about this long
    reference_blocks: int = 3
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        return cls(**{"repeat": MIN_BLOCKS, "block_seconds": 0.02, "reference_blocks": 2, **overrides})


@dataclass
class Row:
    layer: str
    op: str
    direction: str
    impl: str
    unit: str
    work: float  # FLOPs or bytes of one call
    seconds: float | None = None
    blocks: int = 0
    calls_per_block: int = 0
    memory: memory.MemoryUse | None = None
    check: str = "ok"  # ok | truth | MISMATCH | ERROR | unchecked
    error: float | None = None  # worst |got - ref| in units of the tolerance (<= 1 passes)
    detail: str = ""
    vs_reference: float | None = None  # the reference's time / this time
    vs_torch: float | None = None  # torch's time / this time
    peak_share: float | None = None

    @property
    def rate(self) -> float | None:
        """GFLOP/s or GB/s."""
        return self.work / self.seconds / 1e9 if self.seconds else None

    @property
    def failed(self) -> bool:
        return self.check in ("MISMATCH", "ERROR")


@dataclass
class Report:
    machine: dict
    settings: dict
    rows: list
    notes: list = field(default_factory=list)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if r.failed]


AUTO = "auto"  # what a user gets by default: whichever algorithm convkit._auto picks per call


def check_algos(requested) -> tuple:
    """--algo names, each registered for at least one CPU primitive (or "auto")."""
    known = sorted({impl.algo for impl in convkit.implementations("cpu")} - {REFERENCE}) + [AUTO]
    unknown = [a for a in requested if a not in known]
    if unknown:
        raise ValueError(f"--algo: {unknown} not registered on the CPU; available: {known}")
    return tuple(requested)


def case_algos(case, requested) -> tuple:
    """(algorithms to time, requested ones this case's primitives lack)."""
    have = [a for a in ops.algorithms(case.layer.op, case.direction) if a != REFERENCE]
    if requested is None:
        return have, []
    have.append(AUTO)  # runs every case: at worst it picks the reference
    return [a for a in requested if a in have], [a for a in requested if a not in have]


def run_case(case, settings: Settings) -> tuple:
    """Rows of one (layer, direction), and notes about it."""
    algos, lacking = case_algos(case, settings.algos)
    notes = [f"{case.layer.name} {case.direction}: {a!r} does not provide {'+'.join(case.primitives)}; skipped"
             for a in lacking]
    fns = {REFERENCE: case.convkit_fn(REFERENCE), **{a: case.convkit_fn(a) for a in algos}}
    if settings.against_torch:
        fns[TORCH] = case.torch_fn()
    rows = {name: Row(case.layer.name, case.layer.op, case.direction, name, case.unit, case.work) for name in fns}
    truth, estimates = None, {}
    for name, fn in fns.items():  # the reference first: its result is the truth
        row = rows[name]
        try:
            got = fn()
            if name == REFERENCE:
                truth, row.check = got, "truth"
            elif truth is None:
                row.check, row.detail = "unchecked", "the reference failed"
            else:
                ok, row.error, row.detail = compare(got, truth)
                row.check = "ok" if ok else "MISMATCH"
            del got
            _, estimates[name], row.memory = memory.measure(fn)
        except NotCovered as exc:  # an algorithm refusing a shape it does not compute (Winograd: 3x3 only)
            notes.append(f"{case.layer.name} {case.direction}: {exc}; skipped")
            del rows[name]
        except Exception as exc:  # noqa: BLE001  (a failing implementation is a row, not a crash)
            row.check, row.detail = "ERROR", f"{type(exc).__name__}: {exc}"
    timed = interleaved(
        {n: fns[n] for n in estimates},
        {n: 1 if n == REFERENCE else calls_per_block(t, settings.block_seconds) for n, t in estimates.items()},
        {n: settings.reference_blocks if n == REFERENCE else settings.repeat for n in estimates})
    for name, t in timed.items():
        rows[name].seconds, rows[name].blocks, rows[name].calls_per_block = t.median, t.blocks, t.calls_per_block
    _relate(list(rows.values()))
    return list(rows.values()), notes


def _relate(rows: list) -> None:
    """Speed-up over the reference, ratio to torch (>1: faster than the other)."""
    by_impl = {r.impl: r for r in rows}
    for row in rows:
        for attr, other in (("vs_reference", REFERENCE), ("vs_torch", TORCH)):
            base = by_impl.get(other)
            if base is not None and base.seconds and row.seconds:
                setattr(row, attr, base.seconds / row.seconds)


def run(layers: list, settings: Settings, progress: Progress | None = None) -> Report:
    torch_version = None
    if settings.against_torch:
        try:
            import torch
        except ImportError:
            raise ValueError("--against torch: PyTorch is not installed (pip install 'convkit[torch]')") from None
        torch_version = torch.__version__
    if settings.algos is not None:
        check_algos(settings.algos)
    threads = settings.threads if settings.threads is not None else convkit.get_num_threads()
    rows, notes = [], []
    with same_threads(threads, settings.against_torch) as thread_settings:
        peaks = {ops.GFLOPS: peak.matmul_gflops(), ops.GBS: peak.copy_gbs()}
        progress = progress or Progress(enabled=False)
        progress.start(len(layers) * len(settings.directions))
        for layer in layers:
            for direction in settings.directions:
                progress.step(f"{layer.name} {direction}")
                case_rows, case_notes = run_case(ops.make_case(layer, direction, settings.seed), settings)
                rows += case_rows
                notes += case_notes
        progress.finish()
    for row in rows:
        if row.rate is not None:
            row.peak_share = row.rate / peaks[row.unit]
    machine = {
        "convkit": convkit.__version__, "numpy": np.__version__, "torch": torch_version,
        "cpu": platform.processor() or platform.machine(), "isa": convkit.get_isa(),
        "threads": thread_settings,
        "peak GFLOP/s (float32 matmul, NumPy BLAS)": round(peaks[ops.GFLOPS], 1),
        "peak GB/s (copy, read + write)": round(peaks[ops.GBS], 1),
    }
    run_settings = {"directions": list(settings.directions), "algos": settings.algos, "repeat": settings.repeat,
                    "reference_blocks": settings.reference_blocks, "block_seconds": settings.block_seconds,
                    "seed": settings.seed}
    notes = [
        f"time: median over {settings.repeat} interleaved blocks of back-to-back calls, the first call of each "
        f"block not counted; the reference, a slow baseline, over {settings.reference_blocks} blocks of 1 call",
        "GFLOP/s count a multiply-add as 2, the backward (grad-input + grad-weight) as 2x the forward; "
        "pooling GB/s count bytes read + written",
        "x ref / x torch: that implementation's time over this one's (> 1: this one is faster); "
        "% peak: of the float32 matmul (GFLOP/s) or the copy bandwidth (GB/s) measured at the start",
        "memory: peak over one (warm) call, the largest of tracemalloc's peak (Python/NumPy allocations), the "
        "resident-set high-water growth (C++ and torch buffers too, but not memory the allocator reuses from "
        "earlier calls) and the size of the results",
        *notes,
    ]
    return Report(machine, run_settings, rows, notes)
