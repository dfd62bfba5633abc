"""Winograd (F(4x4, 3x3); grad-weight F(3x3, 4x4)) vs the direct engine vs PyTorch on the
suite's layers it covers.

    python bench/winograd_vs_direct.py [--threads 1] [--clock cpu] [--blocks 7] [--layers a,b] [--fresh-weights]

Every conv2d and conv_transpose2d layer of the suite that algo="winograd" computes (3x3
stride 1 any dilation, and strided kernels of at most 3 taps per stride phase), in
conv2d's terms: a conv_transpose2d layer is the conv2d whose grad-input it is, so its
forward is the "gin" row and its grad-input the "fwd" row ("gw", the grad-weight, is
the same in both). Per layer and direction,
float32, NCHW: GFLOP/s (direct-convolution FLOPs, a multiply-add counted as 2, so the rates
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
import time
from pathlib import Path

import numpy as np

import convkit
from convkit import reference as ref
from convkit._args import conv_geometry, conv_transpose_geometry
from convkit._impl_winograd import covers as winograd_covers
from convkit.bench.timing import calibrate, interleaved


def _suite(path: str) -> list:
    for p in ([path] if path else [Path(__file__).with_name("suite.json"), "/work/shared/bench/suite.json"]):
        if Path(p).exists():
            return json.loads(Path(p).read_text())["layers"]
    raise SystemExit("suite.json not found (--suite)")


def _as_conv2d(L: dict):
    """(x shape, weight shape, stride, padding, dilation) of the conv2d a layer is or is
    the adjoint of (conv_transpose2d: x is its output, weight as it takes it)."""
    kh, kw = L["kernel"]
    s, p, d = L["stride"], L["padding"], L["dilation"]
    if L["op"] == "conv2d":
        return (L["N"], L["C"], L["H"], L["W"]), (L["K"], L["C"] // L["groups"], kh, kw), s, p, d
    g, _ = conv_transpose_geometry((L["N"], L["C"], L["H"], L["W"]), (L["C"], L["K"], kh, kw), s, p,
                                   L["output_padding"], L["groups"], d)
    return (g.N, g.C, g.H, g.W), (L["C"], L["K"], kh, kw), s, p, d


def _winograd_layers(layers: list, names: str) -> list:
    want = set(filter(None, names.split(",")))
    out = []
    for L in layers:
        if L["op"] not in ("conv2d", "conv_transpose2d") or L["groups"] != 1 or (want and L["name"] not in want):
            continue
        x_shape, w_shape, s, p, d = _as_conv2d(L)
        if winograd_covers(conv_geometry(x_shape, w_shape, s, p, d, 1), np.float32) is None:
            out.append(L)
    return out


def _median_seconds(fns: dict, blocks: int, clock, before) -> dict:
    """Median seconds per call of each fn, in bench/timing.py's interleaved blocks of about
    0.2 s; before() runs ahead of each call, untimed."""
    calls = calibrate(fns, 0.2, clock, cap=1 << 30, before=before)
    timed = interleaved(fns, calls, dict.fromkeys(fns, blocks), clock, before=before)
    return {name: t.median for name, t in timed.items()}


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
        x_shape, w_shape, s, p, d = _as_conv2d(L)
        H, W = x_shape[2:]
        x = rng.uniform(-1, 1, x_shape).astype(np.float32)
        w = rng.uniform(-1, 1, w_shape).astype(np.float32)
        w_sets = (w.copy(), rng.uniform(-1, 1, w.shape).astype(np.float32))
        step = iter(range(1 << 62))

        def before():  # fresh weights: new values in place (see above)
            if args.fresh_weights:
                i = next(step)
                np.multiply(w_sets[i % 2], np.float32(1 + i * 2.0 ** -20), out=w)
        y_ref = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, s, p, d)
        gy = rng.uniform(-1, 1, y_ref.shape).astype(np.float32)
        gx_ref = ref.conv2d_grad_input(gy.astype(np.float64), w.astype(np.float64), (H, W), s, p, d, 1)
        gw_ref = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), w_shape[2:], s, p, d, 1)
        flops = 2.0 * y_ref.size * np.prod(w_shape[1:])
        xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
        directions = {
            "fwd": ({a: (lambda a=a: convkit.conv2d(x, w, None, s, p, d, algo=a)) for a in algos},
                    lambda: torch.nn.functional.conv2d(xt, wt, None, s, p, d), y_ref),
            "gin": ({a: (lambda a=a: convkit.conv2d_backward(gy, x, w, s, p, d, need_weight=False, need_bias=False,
                                                             algo=a)[0]) for a in algos},
                    lambda: torch.ops.aten.convolution_backward(gyt, xt, wt, None, [s, s], [p, p], [d, d], False,
                                                                [0, 0], 1, [True, False, False])[0], gx_ref),
            "gw": ({a: (lambda a=a: convkit.conv2d_backward(gy, x, w, s, p, d, need_input=False, need_bias=False,
                                                            algo=a)[1]) for a in algos},
                   lambda: torch.ops.aten.convolution_backward(gyt, xt, wt, None, [s, s], [p, p], [d, d], False,
                                                               [0, 0], 1, [False, True, False])[1], gw_ref),
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
