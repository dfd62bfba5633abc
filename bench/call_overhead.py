"""Per-call overhead on a tiny layer: convkit.conv2d (NumPy) and convkit.torch.conv2d against
torch.nn.functional.conv2d, where the kernel's work is negligible and the call is the cost.

    python bench/call_overhead.py [--blocks 9] [--calls 2000] [--clock cpu|wall]

The layer is issue #3's: a 1x1x8x8 float32 input, one 3x3 filter, no padding. One thread
for everyone (convkit and PyTorch), interleaved blocks of back-to-back calls, the first of
each block discarded, median over blocks (bench/timing.py). The default clock is the
calling thread's CPU time (the machine is shared; one thread makes that the whole cost).
Also listed, for scale: convkit's C++ binding called directly (the floor under the Python
path), and convkit.torch.conv2d with a weight that requires grad, which goes through
PyTorch's custom-op dispatcher and autograd (a training step's forward).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import convkit
import convkit.torch
from convkit import _cpu

try:
    from .timing import MIN_BLOCKS, interleaved
except ImportError:  # run as a script: python bench/call_overhead.py
    from timing import MIN_BLOCKS, interleaved


def calls(x: torch.Tensor, w: torch.Tensor) -> dict:
    xn, wn = x.numpy(), w.numpy()
    w_grad = w.clone().requires_grad_()
    return {
        "torch F.conv2d": lambda: F.conv2d(x, w),
        "convkit.conv2d (NumPy)": lambda: convkit.conv2d(xn, wn),
        "convkit.torch.conv2d": lambda: convkit.torch.conv2d(x, w),
        "convkit.torch.conv2d, w.requires_grad": lambda: convkit.torch.conv2d(x, w_grad),
        "  binding alone (_cpu.conv2d_forward)": lambda: _cpu.conv2d_forward(xn, wn, None, (1, 1), (0, 0, 0, 0),
                                                                            (1, 1), 1, False, "NCHW"),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=9, help=f"interleaved blocks (>= {MIN_BLOCKS})")
    parser.add_argument("--calls", type=int, default=2000, help="counted calls per block")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    convkit.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 3, 3, generator=g)
    fns = calls(x, w)
    want = F.conv2d(x, w)
    for name, fn in fns.items():
        got = fn()
        torch.testing.assert_close(torch.as_tensor(got).detach(), want, msg=name)
    timed = interleaved(fns, dict.fromkeys(fns, args.calls), dict.fromkeys(fns, args.blocks),
                        clock=time.thread_time if args.clock == "cpu" else time.perf_counter)
    base = timed["torch F.conv2d"].median
    print(f"per-call time, 1x1x8x8 input, 3x3 kernel, float32, 1 thread, {args.clock} clock, median of "
          f"{args.blocks} blocks of {args.calls} calls (torch {torch.__version__})")
    for name, t in timed.items():
        print(f"  {name:40s} {t.median * 1e6:7.2f} us  {t.median / base:5.2f}x torch")
    return {name: t.median for name, t in timed.items()}


if __name__ == "__main__":
    main()
