"""convkit's depthwise engine against torch.nn.functional.conv2d(groups=C), side by side.

Runs the depthwise layers (groups == C) of the layer suite, float32, forward and backward
(grad-input + grad-weight, counted as 2x the forward FLOPs), in NCHW (the suite's layout)
and NHWC (torch: channels_last), the same number of threads for both libraries, in
interleaved blocks (convkit x n, torch x n, ...; convkit.bench.timing.interleaved:
the other library's threads settle first, the first call of each block wakes this one's
and is dropped), and prints the median over the blocks. A block's calls fill about
--block-ms (bench/timing.py's calibrate, at least 3 calls), as in bench/conv_vs_torch.py:
blocks of a fixed 10 calls, under a millisecond for the 56x56x144 layer, measured its
start-up more than the kernels at 2 threads (back to back on a quiet machine, convkit's
NCHW forward 71 GFLOP/s and 1.33-1.40x torch in them, 130 GFLOP/s and 2.19-2.27x in
blocks of 40 ms, as the suite's bench reads it):

    python bench/depthwise_vs_torch.py [--suite suite.json] [--threads 2] [--blocks 9] [--block-ms 40]
                                       [--layouts NCHW,NHWC] [--clock wall|cpu]

--clock cpu times the calling thread's CPU time (time.thread_time), which other users'
jobs on a shared machine do not inflate; it needs --threads 1 (both libraries then run on
the calling thread).

Both libraries allocate their outputs on every call. In a process that holds little else,
glibc returns the top of its heap to the system at each free (M_TRIM_THRESHOLD, 128 KiB by
default, and large blocks are mmap'ed afresh), so every call page-faults its outputs in
again: torch's NCHW depthwise forward on the 56x56x144 layer took ~1300 minor faults and
~2 ms of system time a call (2.9 GFLOP/s against 40-60 once a single output array was kept
alive). A network in steady state reuses freed memory, so this script raises both glibc
thresholds before timing (steady_heap) and measures the kernels, not the kernel's memory
faults.

GB/s counts the bytes each pass must move at least: forward reads x and w and writes y;
backward reads grad_output, x and w and writes grad_input and grad_weight.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import convkit
from convkit.bench.timing import calibrate, interleaved, steady_heap


def default_suite() -> Path | None:
    """The suite sits at <workspace>/shared/bench/suite.json, beside the checkouts."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "bench" / "suite.json"
        if candidate.exists():
            return candidate
    return None


def depthwise_layers(suite: Path) -> list:
    layers = json.loads(suite.read_text())["layers"]
    return [L for L in layers if L["op"] == "conv2d" and L["groups"] == L["C"] and L["C"] > 1]


def contenders(L: dict, layout: str):
    """(forward, backward) callables for convkit and torch on the same float32 data."""
    rng = np.random.default_rng(0)
    N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
    kh, kw = L["kernel"]
    s, p, d, groups = L["stride"], L["padding"], L["dilation"], L["groups"]
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((K, C // groups, kh, kw), dtype=np.float32)
    y = convkit.conv2d(x, w, None, s, p, d, groups)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    xt, wt, gyt = (torch.from_numpy(a) for a in (x, w, gy))
    pair = (lambda v: [v, v] if isinstance(v, int) else list(v))
    if layout == "NHWC":
        x, gy = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (x, gy))
        xt, gyt = (a.contiguous(memory_format=torch.channels_last) for a in (xt, gyt))

    opts = dict(layout=layout, algo="direct")
    ours = (lambda: convkit.conv2d(x, w, None, s, p, d, groups, **opts),
            lambda: convkit.conv2d_backward(gy, x, w, s, p, d, groups, need_bias=False, **opts))
    theirs = (lambda: F.conv2d(xt, wt, None, s, p, d, groups),
              lambda: torch.ops.aten.convolution_backward(gyt, xt, wt, None, pair(s), pair(p), pair(d), False,
                                                          [0, 0], groups, [True, True, False]))
    flops = 2 * N * K * y.shape[2] * y.shape[3] * (C // groups) * kh * kw
    nbytes = 4 * np.array([x.size + w.size + y.size, gy.size + 2 * x.size + 2 * w.size])
    return ours, theirs, flops, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", type=Path, default=default_suite())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--block-ms", type=float, default=40.0, help="each block's calls fill about this long")
    ap.add_argument("--layouts", default="NCHW,NHWC", help="comma-separated; torch runs NHWC as channels_last")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the calling thread's CPU time, immune to other users' jobs (needs --threads 1)")
    args = ap.parse_args()
    if args.suite is None:
        ap.error("no suite.json found; pass --suite")
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures one thread: use it with --threads 1")
    now = time.thread_time if args.clock == "cpu" else time.perf_counter
    heap = "steady heap" if steady_heap() else "heap as glibc leaves it (mallopt unavailable)"
    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)
    print(f"convkit {convkit.__version__} ({convkit.get_isa()}), torch {torch.__version__}, "
          f"{args.threads} threads, clock {args.clock}, {heap}, median of {args.blocks} interleaved blocks of "
          f"about {args.block_ms:g} ms")
    head = "| layer | layout | pass | convkit GFLOP/s | convkit GB/s | torch GFLOP/s | torch GB/s | ratio |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for layout in args.layouts.split(","):
        for L in depthwise_layers(args.suite):
            ours, theirs, flops, nbytes = contenders(L, layout)
            for pass_, factor, fo, ft, nb in (("fwd", 1, ours[0], theirs[0], nbytes[0]),
                                              ("bwd", 2, ours[1], theirs[1], nbytes[1])):
                with torch.no_grad():
                    fns = {"ours": fo, "theirs": ft}
                    calls = calibrate(fns, args.block_ms / 1e3, now, floor=3)
                    timed = interleaved(fns, calls, dict.fromkeys(fns, args.blocks), now)
                t_ours, t_theirs = timed["ours"].median, timed["theirs"].median
                print(f"| {L['name']} | {layout} | {pass_} | {factor * flops / t_ours / 1e9:.1f} | "
                      f"{nb / t_ours / 1e9:.1f} | {factor * flops / t_theirs / 1e9:.1f} | {nb / t_theirs / 1e9:.1f} | "
                      f"{t_theirs / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
