"""Per-call overhead on a tiny layer: convkit.conv2d (NumPy) and convkit.torch.conv2d against
torch.nn.functional.conv2d, where the kernel's work is negligible and the call is the cost;
and the same for conv2d's backward, conv_transpose2d and max_pool2d (NumPy) against their
PyTorch calls.

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
    """name -> (call, the name of the PyTorch call it is compared with)."""
    xn, wn = x.numpy(), w.numpy()
    gy = torch.ones(1, 1, 6, 6)
    gyn = gy.numpy()
    w_grad = w.clone().requires_grad_()
    conv, back = "torch F.conv2d", "torch aten.convolution_backward"
    return {
        conv: (lambda: F.conv2d(x, w), conv),
        "convkit.conv2d (NumPy)": (lambda: convkit.conv2d(xn, wn), conv),
        "convkit.torch.conv2d": (lambda: convkit.torch.conv2d(x, w), conv),
        "convkit.torch.conv2d, w.requires_grad": (lambda: convkit.torch.conv2d(x, w_grad), conv),
        "  binding alone (_cpu.conv2d_forward)": (lambda: _cpu.conv2d_forward(xn, wn, None, (1, 1), (0, 0, 0, 0),
                                                                             (1, 1), 1, False, "NCHW"), conv),
        back: (lambda: torch.ops.aten.convolution_backward(gy, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                           [True, True, False])[:2], back),
        "convkit.conv2d_backward (NumPy)": (lambda: convkit.conv2d_backward(gyn, xn, wn, need_bias=False)[:2], back),
        "torch F.conv_transpose2d": (lambda: F.conv_transpose2d(gy, w), "torch F.conv_transpose2d"),
        "convkit.conv_transpose2d (NumPy)": (lambda: convkit.conv_transpose2d(gyn, wn), "torch F.conv_transpose2d"),
        "torch F.max_pool2d": (lambda: F.max_pool2d(x, 2), "torch F.max_pool2d"),
        "convkit.max_pool2d (NumPy)": (lambda: convkit.max_pool2d(xn, 2), "torch F.max_pool2d"),
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
    table = calls(x, w)
    fns = {name: fn for name, (fn, _) in table.items()}
    for name, (fn, theirs) in table.items():
        got, want = fn(), fns[theirs]()
        for g_, w_ in zip(*((r,) if not isinstance(r, tuple) else r for r in (got, want))):
            torch.testing.assert_close(torch.as_tensor(g_).detach(), w_.detach(), msg=name)
    timed = interleaved(fns, dict.fromkeys(fns, args.calls), dict.fromkeys(fns, args.blocks),
                        clock=time.thread_time if args.clock == "cpu" else time.perf_counter)
    print(f"per-call time, 1x1x8x8 input, 3x3 kernel, float32, 1 thread, {args.clock} clock, median of "
          f"{args.blocks} blocks of {args.calls} calls (torch {torch.__version__})")
    for name, t in timed.items():
        base = timed[table[name][1]].median
        print(f"  {name:40s} {t.median * 1e6:7.2f} us  {t.median / base:5.2f}x torch")
    return {name: t.median for name, t in timed.items()}


if __name__ == "__main__":
    main()
