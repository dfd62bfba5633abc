"""convkit's direct engine (or, with --algo, another algorithm) against torch.nn.functional, side by side, on every conv2d and
conv_transpose2d layer of the layer suite: forward and backward (grad-input +
grad-weight), float32, the same thread count for both.

Method (DESIGN.md, "how to measure"; bench/timing.py's interleaved blocks): one process,
alternating blocks of back-to-back calls (convkit, torch, convkit, torch, ...); the first
call of each block wakes that library's threads and is discarded; a block's time is the
mean of its other calls; the ratio is the median over >= 7 blocks of the ratio of
neighbouring blocks (paired: they share the machine's load). The machine's peak is a large float32
matrix product through NumPy's BLAS in the same run; run the script with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they slow a current OpenBLAS down):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/conv_vs_torch.py

Dense layers are also timed with 1 thread against 2 (convkit's scaling). Targets
(issue 3): every layer >= 1.0x torch; depthwise, dilated, transposed and few-channel
layers >= 2x; dense 3x3 forward >= 80% of peak; 2 threads vs 1 >= 1.8x on dense layers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _threads_arg(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "2"


# The peak's BLAS uses the same thread count as the two libraries (read before NumPy loads it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads_arg(sys.argv))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convkit  # noqa: E402
from convkit.bench.peak import matmul_gflops  # noqa: E402
from convkit.bench.timing import calibrate, interleaved, same_threads, steady_heap  # noqa: E402

SUITES = (Path(__file__).with_name("suite.json"), Path("/work/shared/bench/suite.json"))


def load_layers(path, names):
    path = Path(path) if path else next(p for p in SUITES if p.exists())
    layers = [L for L in json.loads(path.read_text())["layers"] if L["op"] in ("conv2d", "conv_transpose2d")]
    return [L for L in layers if not names or L["name"] in names]


def category(L):
    """What the issue's target for the layer is, by kind."""
    k = L["kernel"]
    if L["op"] == "conv_transpose2d":
        return "transposed"
    if L.get("groups", 1) == L["C"] and L["C"] > 1:
        return "depthwise"
    if L.get("dilation", 1) != 1:
        return "dilated"
    if L["C"] <= 3:
        return "few-channel"
    return "dense 3x3" if k == [3, 3] else "dense"


def target(cat):
    return 1.0 if cat.startswith("dense") else 2.0


class Layer:
    """One suite layer: inputs for both libraries, fwd/bwd callables, FLOPs."""

    def __init__(self, L, rng):
        self.name, self.cat = L["name"], category(L)
        N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
        kh, kw = L["kernel"]
        s, p, d, g = L["stride"], L["padding"], L.get("dilation", 1), L.get("groups", 1)
        p = tuple(p) if isinstance(p, list) else p
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        if L["op"] == "conv2d":
            w = rng.standard_normal((K, C // g, kh, kw), dtype=np.float32)
            y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, s, p, d, g).numpy()
            self.flops = 2.0 * y.size * (C // g) * kh * kw
            fwd_ck = lambda: convkit.conv2d(x, w, None, s, p, d, g, algo=ALGO["name"])  # noqa: E731
            bwd_ck = lambda: convkit.conv2d_backward(gy, x, w, s, p, d, g, need_bias=False, algo=ALGO["name"])  # noqa
            fwd_t = lambda: F.conv2d(xt, wt, None, s, p, d, g)  # noqa: E731
            transposed, op = False, (0, 0)
        else:
            op = L.get("output_padding", 0)
            w = rng.standard_normal((C, K // g, kh, kw), dtype=np.float32)
            y = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), None, s, p, op, g, d).numpy()
            self.flops = 2.0 * x.size * (K // g) * kh * kw
            fwd_ck = lambda: convkit.conv_transpose2d(x, w, None, s, p, op, g, d, algo=ALGO["name"])  # noqa: E731
            bwd_ck = lambda: convkit.conv_transpose2d_backward(gy, x, w, s, p, op, g, d, need_bias=False,  # noqa
                                                                algo=ALGO["name"])
            fwd_t = lambda: F.conv_transpose2d(xt, wt, None, s, p, op, g, d)  # noqa: E731
            transposed, op = True, (op, op) if isinstance(op, int) else op
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
        pair = lambda v: list(v) if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
        # aten's backward directly: grad-input and grad-weight, no autograd bookkeeping.
        bwd_t = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            gyt, xt, wt, None, pair(s), pair(p), pair(d), transposed, list(op), g, [True, True, False])
        self.fns = {"fwd": (fwd_ck, fwd_t), "bwd": (bwd_ck, bwd_t)}


ALGO = {"name": "direct"}  # --algo: the convkit algorithm timed
CLOCK = {"now": time.perf_counter}  # --clock cpu: time.thread_time (one thread only)


QUIET = {"wait": 0.0, "noisy": 0, "blocks": 0}  # --wait-quiet's budget and its tally


def runnable_threads():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    return 1


def wait_quiet():
    """On a shared machine: wait (up to QUIET["wait"] s) until no other thread is runnable,
    three polls in a row, so that a block pair is not timed against someone's build."""
    if QUIET["wait"] <= 0:
        return
    QUIET["blocks"] += 1
    deadline, calm = time.monotonic() + QUIET["wait"], 0
    while time.monotonic() < deadline:
        calm = calm + 1 if runnable_threads() <= 1 else 0
        if calm >= 3:
            return
        time.sleep(0.01)
    QUIET["noisy"] += 1


def race(fns: dict, blocks: int, around=None) -> dict:
    """Per-call seconds of each block of each fn (bench/timing.py's interleaved blocks, about
    40 ms each, at least 3 counted calls), a quiet machine awaited before each round."""
    calls = calibrate(fns, 0.04, CLOCK["now"], floor=3, around=around)
    timed = interleaved(fns, calls, dict.fromkeys(fns, blocks), CLOCK["now"], around=around, each_round=wait_quiet)
    return {name: t.block_seconds for name, t in timed.items()}


def paired_ratio(a, b):
    """Median over blocks of b[i] / a[i]: neighbouring blocks share the machine's load
    (other users' jobs come and go), so the ratio of a pair holds better than the ratio
    of two medians."""
    return statistics.median(y / x for x, y in zip(a, b))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: all conv layers)")
    ap.add_argument("--suite", default="", help="suite.json (default: bench/suite.json or /work/shared/bench)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1-vs-N-thread runs")
    ap.add_argument("--out", default="", help="also write the Markdown table here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each block pair wait up to S seconds until no other thread is runnable")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the calling thread's CPU time, immune to other users' jobs (needs --threads 1)")
    ap.add_argument("--algo", default="direct",
                    help="convkit's algorithm: direct (default), auto (what users get), winograd, im2col")
    args = ap.parse_args(argv)
    QUIET["wait"] = args.wait_quiet
    ALGO["name"] = args.algo
    if args.clock == "cpu":
        if args.threads != 1:
            ap.error("--clock cpu measures one thread: use it with --threads 1")
        CLOCK["now"] = time.thread_time

    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)
    heap = "steady heap" if steady_heap() else "heap as glibc leaves it"
    peak = matmul_gflops(4096)
    rng = np.random.default_rng(0)
    layers = [Layer(L, rng) for L in load_layers(args.suite, set(filter(None, args.layers.split(","))))]

    lines = [f"peak (float32 matmul, {args.threads} threads): {peak:.0f} GFLOP/s; isa {convkit.get_isa()}; algo {args.algo}; "
             f"torch {torch.__version__}; blocks {args.blocks}; clock {args.clock}; {heap}", "",
             "| layer | kind | dir | convkit GFLOP/s | torch GFLOP/s | ratio (paired) | target | % peak "
             "| 1->N threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for layer in layers:
        for d in ("fwd", "bwd"):
            ck, tt = layer.fns[d]
            t = race({"convkit": ck, "torch": tt}, args.blocks)
            flops = layer.flops * (2 if d == "bwd" else 1)
            g_ck, g_t = (flops / statistics.median(t[k]) / 1e9 for k in ("convkit", "torch"))
            ratio = paired_ratio(t["convkit"], t["torch"])
            scaling = ""
            if layer.cat.startswith("dense") and not args.no_scaling and args.threads > 1:
                counts = {"1": 1, "N": args.threads}
                t = race({"1": ck, "N": ck}, args.blocks, around=lambda name: same_threads(counts[name], False))
                scaling = f"{paired_ratio(t['N'], t['1']):.2f}x"
            tgt = target(layer.cat)
            mark = "" if ratio >= tgt else " (miss)"
            row = (f"| {layer.name} | {layer.cat} | {d} | {g_ck:.0f} | {g_t:.0f} | {ratio:.2f}{mark} | "
                   f"{tgt:.0f}x | {100 * g_ck / peak:.0f}% | {scaling} |")
            lines.append(row)
            print(row, flush=True)
    if QUIET["blocks"]:
        lines.append(f"\n{QUIET['noisy']} of {QUIET['blocks']} block pairs started without a quiet machine "
                     f"(--wait-quiet {QUIET['wait']:g})")
        print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
