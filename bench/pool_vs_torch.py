"""Pooling, convkit against torch.nn.functional, side by side in one process.

For every pooling layer of the suite (max, average, global average), forward and
backward: GB/s moved (bytes read + written: input and output forward; grad_output,
indices and grad_input backward), the ratio convkit / torch, and convkit's share of the
machine's copy bandwidth, measured in the same run by a large NumPy copy.

Timing (DESIGN.md, "how to measure"): alternating blocks of back-to-back calls, convkit's
then torch's, both at the same thread count; the first call of each block wakes that
library's threads and is dropped; a block's time is the mean of the rest, a result the
median over the blocks.

    python bench/pool_vs_torch.py --suite ../shared/bench/suite.json [--threads 2] [--blocks 9] [--clock cpu]

--clock cpu times with the process's CPU time instead of the wall clock: on a shared
machine, with --threads 1, it leaves out the time other processes hold the core.

Standalone on purpose: needs only convkit, NumPy and PyTorch.
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
from convkit.bench.peak import copy_gbs
from convkit.bench.timing import calibrate, interleaved, steady_heap

POOL_OPS = ("max_pool2d", "avg_pool2d", "global_avg_pool2d")


def find_suite(given):
    here = Path(__file__).resolve().parent
    candidates = [Path(given)] if given else [here / "suite.json", here.parent.parent / "shared/bench/suite.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(f"suite.json not found (tried {', '.join(map(str, candidates))}); pass --suite FILE")


CLOCK = time.perf_counter  # or time.process_time (--clock cpu)


def race(fns, blocks):
    """Median per-call seconds of each fn, in bench/timing.py's interleaved blocks (about
    30 ms, at least 3 counted calls)."""
    named = dict(enumerate(fns))
    calls = calibrate(named, 0.03, CLOCK, floor=3, cap=199)
    return [t.median for t in interleaved(named, calls, dict.fromkeys(named, blocks), CLOCK).values()]


def layer_cases(layer):
    """(direction, convkit call, torch call, bytes moved) for one suite layer."""
    rng = np.random.default_rng(0)
    N, C, H, W, op = layer["N"], layer["C"], layer["H"], layer["W"], layer["op"]
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    xt = torch.from_numpy(x)
    if op == "global_avg_pool2d":
        y = convkit.global_avg_pool2d(x)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        gyt = torch.from_numpy(gy)
        check(y, F.adaptive_avg_pool2d(xt, 1))
        check(convkit.global_avg_pool2d_backward(gy, x), torch.ops.aten._adaptive_avg_pool2d_backward(gyt, xt))
        return [("fwd", lambda: convkit.global_avg_pool2d(x), lambda: F.adaptive_avg_pool2d(xt, 1), x.nbytes + y.nbytes),
                ("bwd", lambda: convkit.global_avg_pool2d_backward(gy, x),
                 lambda: torch.ops.aten._adaptive_avg_pool2d_backward(gyt, xt), gy.nbytes + x.nbytes)]
    k, s, p = tuple(layer["kernel"]), layer["stride"], layer["padding"]
    if op == "max_pool2d":
        y, idx = convkit.max_pool2d(x, k, s, p, return_indices=True)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        gyt, idxt = torch.from_numpy(gy), torch.from_numpy(idx)
        yt, idx_torch = F.max_pool2d(xt, k, s, p, return_indices=True)
        check(y, yt)
        assert np.array_equal(idx, idx_torch.numpy()), layer["name"]

        def torch_bwd():
            return torch.ops.aten.max_pool2d_with_indices_backward(gyt, xt, k, s, p, 1, False, idxt)

        check(convkit.max_pool2d_backward(gy, x, k, s, p, indices=idx), torch_bwd())
        return [("fwd", lambda: convkit.max_pool2d(x, k, s, p), lambda: F.max_pool2d(xt, k, s, p),
                 x.nbytes + y.nbytes),
                ("bwd", lambda: convkit.max_pool2d_backward(gy, x, k, s, p, indices=idx), torch_bwd,
                 gy.nbytes + idx.nbytes + x.nbytes)]
    y = convkit.avg_pool2d(x, k, s, p)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gyt = torch.from_numpy(gy)

    def torch_bwd():
        return torch.ops.aten.avg_pool2d_backward(gyt, xt, k, s, p, False, True, None)

    check(y, F.avg_pool2d(xt, k, s, p))
    check(convkit.avg_pool2d_backward(gy, x, k, s, p), torch_bwd())
    return [("fwd", lambda: convkit.avg_pool2d(x, k, s, p), lambda: F.avg_pool2d(xt, k, s, p), x.nbytes + y.nbytes),
            ("bwd", lambda: convkit.avg_pool2d_backward(gy, x, k, s, p), torch_bwd, gy.nbytes + x.nbytes)]


def check(ours, theirs):
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", help="suite JSON (default: bench/suite.json, else ../shared/bench/suite.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=9, help="alternating blocks per measurement (>= 7)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: the process's CPU time (for --threads 1 on a busy machine)")
    ap.add_argument("--layers", nargs="*", help="only the suite layers of these names")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    layers = [la for la in json.loads(find_suite(args.suite).read_text())["layers"] if la["op"] in POOL_OPS
              and (not args.layers or la["name"] in args.layers)]
    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)

    heap = "steady heap" if steady_heap() else "heap as glibc leaves it"
    copy = copy_gbs(256 << 20, args.blocks)
    print(f"convkit {convkit.__version__} (isa {convkit.get_isa()}), torch {torch.__version__}, "
          f"{args.threads} threads, {args.blocks} blocks, {args.clock} clock, {heap}; NumPy copy bandwidth {copy:.1f} GB/s (read + write)\n")
    print("| layer | pass | convkit GB/s | torch GB/s | convkit / torch | convkit % of copy |")
    print("|---|---|---|---|---|---|")
    for layer in layers:
        for direction, ours, theirs, nbytes in layer_cases(layer):
            t_ours, t_theirs = race([ours, theirs], args.blocks)
            gb_ours, gb_theirs = nbytes / t_ours / 1e9, nbytes / t_theirs / 1e9
            print(f"| {layer['name']} | {direction} | {gb_ours:.1f} | {gb_theirs:.1f} | {t_theirs / t_ours:.2f}x | "
                  f"{100 * gb_ours / copy:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
