"""Winograd F(4x4, 3x3) vs the direct engine vs PyTorch on the suite's 3x3 stride-1 layers.

    python bench/winograd_vs_direct.py [--threads 1] [--clock cpu] [--blocks 7] [--layers a,b] [--fresh-weights]

Per layer, forward and grad-input (conv_transpose2d's forward at stride 1), float32,
NCHW: GFLOP/s (direct-convolution FLOPs, a multiply-add counted as 2, so the rates
compare times) of algo="winograd", algo="direct" and torch; the time ratios; and each
convkit algorithm's largest error against the float64 reference, divided by the largest
|reference| (the project's float32 rule allows 1e-4). Side by side in one process,
interleaved blocks (each algorithm's block back to back, its first call discarded),
median over the blocks; same thread count for all. --clock cpu times process CPU time,
which a shared machine's other load does not inflate (at one thread).

Winograd keeps the transformed weights of weights it has seen before (src/conv_winograd.cpp),
so by default every call after the first is inference's case: the same weights again.
--fresh-weights measures training's instead, where an optimizer changes the weights in
place every step: before each call (untimed, for every algorithm alike) every value of
the weight array is overwritten, with the other of two sets of values times a factor new
at each call, so no call finds the weights of an earlier call (nor any cache a hit).
In both modes the errors are those of a call right after the weights changed in place.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import convkit
from convkit import reference as ref


def _suite(path: str) -> list:
    for p in ([path] if path else [Path(__file__).with_name("suite.json"), "/work/shared/bench/suite.json"]):
        if Path(p).exists():
            return json.loads(Path(p).read_text())["layers"]
    raise SystemExit("suite.json not found (--suite)")


def _winograd_layers(layers: list, names: str) -> list:
    want = set(filter(None, names.split(",")))
    return [L for L in layers if L["op"] == "conv2d" and L["kernel"] == [3, 3] and L["stride"] == 1
            and L["groups"] == 1 and (not want or L["name"] in want)]


def _median_seconds(fns: dict, blocks: int, clock, before) -> dict:
    """Interleaved blocks of back-to-back calls (about 0.2 s each), first call discarded;
    before() runs ahead of each call, untimed."""
    def timed(fn):
        before()
        start = clock()
        fn()
        return clock() - start

    calls = {}
    for name, fn in fns.items():
        timed(fn)
        calls[name] = max(1, int(0.2 / max(timed(fn), 1e-6)))
    times = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            timed(fn)
            times[name].append(sum(timed(fn) for _ in range(calls[name])) / calls[name])
    return {name: statistics.median(t) for name, t in times.items()}


def _rel_error(got, want) -> float:
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: every 3x3 stride-1 layer)")
    ap.add_argument("--suite", default="")
    ap.add_argument("--fresh-weights", action="store_true",
                    help="change the weights in place before every call (training), see above")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    algos = ("winograd", "direct")
    print(f"threads {args.threads}, clock {args.clock}, isa {convkit.get_isa()}, median of {args.blocks} blocks, "
          f"{'fresh' if args.fresh_weights else 'repeated'} weights")
    print(f"{'layer':20s} {'dir':4s} {'winograd':>9s} {'direct':>9s} {'torch':>9s}  {'w/direct':>8s} "
          f"{'w/torch':>8s}  {'err winograd':>12s} {'err direct':>10s}")
    rng = np.random.default_rng(0)
    for L in _winograd_layers(_suite(args.suite), args.layers):
        N, C, H, W, K, p, d = L["N"], L["C"], L["H"], L["W"], L["K"], L["padding"], L["dilation"]
        x = rng.uniform(-1, 1, (N, C, H, W)).astype(np.float32)
        w = rng.uniform(-1, 1, (K, C, 3, 3)).astype(np.float32)
        w_sets = (w.copy(), rng.uniform(-1, 1, w.shape).astype(np.float32))
        step = iter(range(1 << 62))

        def before():  # fresh weights: new values in place (see above)
            if args.fresh_weights:
                i = next(step)
                np.multiply(w_sets[i % 2], np.float32(1 + i * 2.0 ** -20), out=w)
        y_ref = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, 1, p, d)
        gy = rng.uniform(-1, 1, y_ref.shape).astype(np.float32)
        gx_ref = ref.conv2d_grad_input(gy.astype(np.float64), w.astype(np.float64), (H, W), 1, p, d, 1)
        flops = 2.0 * N * K * C * 9 * y_ref.shape[2] * y_ref.shape[3]
        xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
        directions = {
            "fwd": ({a: (lambda a=a: convkit.conv2d(x, w, None, 1, p, d, algo=a)) for a in algos},
                    lambda: torch.nn.functional.conv2d(xt, wt, None, 1, p, d), y_ref),
            "gin": ({a: (lambda a=a: convkit.conv2d_backward(gy, x, w, 1, p, d, need_weight=False, need_bias=False,
                                                             algo=a)[0]) for a in algos},
                    lambda: torch.ops.aten.convolution_backward(gyt, xt, wt, None, [1, 1], [p, p], [d, d], False,
                                                                [0, 0], 1, [True, False, False])[0], gx_ref),
        }
        for direction, (ours, theirs, want) in directions.items():
            errors = {}
            for a, fn in ours.items():  # the error of a call right after the weights changed in place
                np.copyto(w, w_sets[1])
                fn()
                np.copyto(w, w_sets[0])
                errors[a] = _rel_error(fn(), want)
            t = _median_seconds({**ours, "torch": theirs}, args.blocks, clock, before)
            rate = {k: flops / v / 1e9 for k, v in t.items()}
            print(f"{L['name']:20s} {direction:4s} {rate['winograd']:9.1f} {rate['direct']:9.1f} {rate['torch']:9.1f}  "
                  f"{t['direct'] / t['winograd']:7.2f}x {t['torch'] / t['winograd']:7.2f}x  "
                  f"{errors['winograd']:12.2e} {errors['direct']:10.2e}", flush=True)


if __name__ == "__main__":
    main()
