"""algo="im2col" against algo="direct" and algo="auto" on the conv layers of the suite.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/im2col_vs_direct.py [--layers a,b] [--markdown FILE]

convkit and NumPy only (no PyTorch). For every conv2d / conv_transpose2d layer of
suite.json and each pass (forward; backward = grad-input + grad-weight, counted as 2x the
forward FLOPs) the candidates run side by side in one process, in bench/timing.py's
interleaved blocks (A A A, B B B, ...): each block starts once OpenBLAS's idle workers
have stopped spinning (timing.settle: they spin ~30 ms after a GEMM, taking a core from
the next block's library), its first call wakes the library's threads and is not
counted, a block's time is the mean of its counted calls, a candidate's time the median
over blocks.
"auto" is the rule table; "tune" is autotune mode (the shape is measured once, by
convkit.explain before the timing, then served from the cache). GFLOP/s per candidate,
then time ratios: im2col / direct, auto and tune against the best of im2col and direct
(1.00 = as fast as the best).

Memory: "col MiB" is the largest column buffer im2col allocated over the pass (its own
record: convkit._im2col.last_call_stats()); "peak MiB" the peak of NumPy/Python
allocations during one call (tracemalloc, which NumPy reports its buffers to: outputs,
column buffer and layout copies; not the direct path's C++ scratch).
Threads: --threads sets convkit.set_num_threads, which im2col's BLAS (SciPy's OpenBLAS)
follows during convkit's calls; OPENBLAS_NUM_THREADS, set from --threads before NumPy
loads, gives the reference sgemm (timed outside convkit) the same count.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CANDIDATES = ("im2col", "direct", "auto", "tune")


def parse_args(argv=None):
    here = Path(__file__).resolve().parent
    default_suite = here / "suite.json"
    if not default_suite.exists():
        default_suite = Path("/work/shared/bench/suite.json")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", type=Path, default=default_suite)
    p.add_argument("--layers", default="", help="comma-separated layer names (default: every conv layer)")
    p.add_argument("--passes", default="forward,backward")
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--block-seconds", type=float, default=0.25, help="counted time per block, about")
    p.add_argument("--threads", type=int, default=0, help="threads for convkit and BLAS (0: all cores)")
    p.add_argument("--layout", default="NCHW", choices=("NCHW", "NHWC"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="cpu: process CPU time, immune to other processes on a shared machine but the sum "
                        "over threads, so only meaningful with --threads 1")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads > 0:
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)  # read by OpenBLAS when NumPy/SciPy load

import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

import convkit  # noqa: E402
from convkit import _im2col  # noqa: E402
from convkit.bench.timing import calibrate, interleaved  # noqa: E402


# ---------------------------------------------------------------------------- timing
def median_seconds(fns: dict, blocks: int, block_seconds: float, clock=time.perf_counter) -> dict:
    """Median seconds per call of each fns[name], in interleaved blocks of about
    block_seconds, each in its autotune mode (see mode)."""
    calls = calibrate(fns, block_seconds, clock, around=mode)
    timed = interleaved(fns, calls, dict.fromkeys(fns, blocks), clock, around=mode)
    return {name: t.median for name, t in timed.items()}


def traced_peak(fn) -> int:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return peak


def blas_peak(clock) -> float:
    """GFLOP/s of a large sgemm through the BLAS im2col uses (SciPy's)."""
    from scipy.linalg.blas import sgemm

    n = 2048
    a = np.asfortranarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    t = median_seconds({"sgemm": lambda: sgemm(1.0, a, a)}, 7, 0.5, clock)["sgemm"]
    return 2 * n**3 / t / 1e9


# ---------------------------------------------------------------------------- layers
def conv_layers(path: Path, names: str) -> list:
    layers = [L for L in json.loads(path.read_text())["layers"] if L["op"] in ("conv2d", "conv_transpose2d")]
    if names:
        wanted = names.split(",")
        unknown = set(wanted) - {L["name"] for L in layers}
        if unknown:
            raise SystemExit(f"unknown conv layers {sorted(unknown)}; known: {[L['name'] for L in layers]}")
        layers = [L for L in layers if L["name"] in wanted]
    return layers


def layer_calls(L: dict, layout: str, dtype):
    """(forward FLOPs, {pass: (fn(algo), explain-op)}, explain args) of one layer."""
    rng = np.random.default_rng(0)
    N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
    kh, kw = L["kernel"]
    groups = L.get("groups", 1)

    def arr(shape):
        a = rng.standard_normal(shape).astype(dtype)
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a

    x = arr((N, C, H, W))
    common = dict(stride=L["stride"], padding=L["padding"], dilation=L["dilation"], groups=groups)
    if L["op"] == "conv2d":
        w = rng.standard_normal((K, C // groups, kh, kw)).astype(dtype)
        y = convkit.conv2d(x, w, **common, layout=layout)
        fwd = lambda algo: convkit.conv2d(x, w, **common, layout=layout, algo=algo)  # noqa: E731
        gy = rng.standard_normal(y.shape).astype(dtype)
        bwd = lambda algo: convkit.conv2d_backward(gy, x, w, **common, layout=layout, algo=algo,  # noqa: E731
                                                   need_bias=False)
    else:
        common["output_padding"] = L.get("output_padding", 0)
        w = rng.standard_normal((C, K // groups, kh, kw)).astype(dtype)
        y = convkit.conv_transpose2d(x, w, **common, layout=layout)
        fwd = lambda algo: convkit.conv_transpose2d(x, w, **common, layout=layout, algo=algo)  # noqa: E731
        gy = rng.standard_normal(y.shape).astype(dtype)
        bwd = lambda algo: convkit.conv_transpose2d_backward(gy, x, w, **common, layout=layout,  # noqa: E731
                                                             algo=algo, need_bias=False)
    # multiply-adds: conv2d's output values, or conv_transpose2d's input values, times
    # weight.shape[1] * kh * kw (C/groups taps per output, K/groups outputs per input)
    macs = (y if L["op"] == "conv2d" else x).size * (w.shape[1] * kh * kw)
    explain = dict(input_shape=x.shape, weight_shape=w.shape, layout=layout, dtype=dtype, **common)
    return 2 * macs, {"forward": (fwd, L["op"]), "backward": (bwd, L["op"] + "_backward")}, explain


@contextlib.contextmanager
def mode(name):
    """Autotune on around the "tune" candidate's blocks: a user leaves it on, and switching
    it per call would time the checked path (each switch forgets the calls' plans)."""
    convkit.autotune(name == "tune")
    try:
        yield
    finally:
        convkit.autotune(False)


def column_bytes(fn) -> int:
    """Largest column buffer over the im2col primitives of one call of the pass."""
    biggest = 0
    real = {n: getattr(_im2col, n) for n in ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")}

    def recording(f):
        def call(*a):
            nonlocal biggest
            out = f(*a)
            biggest = max(biggest, _im2col.last_call_stats()["buffer_bytes"])
            return out
        return call

    try:
        for n, f in real.items():
            setattr(_im2col, n, recording(f))
        fn("im2col")
    finally:
        for n, f in real.items():
            setattr(_im2col, n, f)
    return biggest


# ------------------------------------------------------------------------------ main
def main(args) -> None:
    dtype = np.dtype(args.dtype)
    if args.threads > 0:
        convkit.set_num_threads(args.threads)
    layers = conv_layers(args.suite, args.layers)
    passes = args.passes.split(",")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    peak = blas_peak(clock)
    head = (f"convkit {convkit.__version__}, {args.dtype} {args.layout}, threads: convkit {convkit.get_num_threads()}, "
            f"BLAS {os.environ.get('OPENBLAS_NUM_THREADS', 'all cores')}; ISA {convkit.get_isa()}; "
            f"SciPy sgemm 2048^3: {peak:.0f} GFLOP/s; median of {args.blocks} interleaved blocks, "
            f"{'CPU' if args.clock == 'cpu' else 'wall'} time")
    cols = ["layer", "pass", "im2col", "direct", "auto", "(pick)", "tune", "(pick)", "im2col/direct",
            "auto/best", "tune/best", "col MiB", "peak MiB im2col", "peak MiB direct"]
    rows = []
    print(head, file=sys.stderr)
    for L in layers:
        flops, calls, explain = layer_calls(L, args.layout, dtype)
        for pass_ in passes:
            fn, explain_op = calls[pass_]
            work = flops * (2 if pass_ == "backward" else 1)
            convkit.autotune(True)
            tune_pick = "/".join(c.algo for _, c in convkit.explain(explain_op, **explain).steps)
            convkit.autotune(False)
            auto_pick = "/".join(c.algo for _, c in convkit.explain(explain_op, **explain).steps)
            t = median_seconds({c: (lambda c=c: fn("auto" if c == "tune" else c)) for c in CANDIDATES}, args.blocks,
                               args.block_seconds, clock)
            best = min(t["im2col"], t["direct"])
            gf = {c: work / t[c] / 1e9 for c in CANDIDATES}
            row = [L["name"], pass_, f"{gf['im2col']:.1f}", f"{gf['direct']:.1f}", f"{gf['auto']:.1f}", auto_pick,
                   f"{gf['tune']:.1f}", tune_pick, f"{t['im2col'] / t['direct']:.2f}", f"{t['auto'] / best:.2f}",
                   f"{t['tune'] / best:.2f}", f"{column_bytes(fn) / 2**20:.1f}",
                   *(f"{traced_peak(lambda a=a: fn(a)) / 2**20:.1f}" for a in ("im2col", "direct"))]
            rows.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                      ["| " + " | ".join(r) + " |" for r in rows])
    text = f"{head}\n\nGFLOP/s (higher is better); ratios are time ratios (lower is better).\n\n{table}\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main(ARGS)
