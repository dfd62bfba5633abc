"""Training-step time of a ResNet basic block: convkit.torch's ops against PyTorch's own.

    python bench/resnet_block_torch.py [--batch 8] [--channels 64] [--size 56] [--blocks 7] [--calls 3]
                                       [--threads 2] [--own-threads]

The block is conv3x3 -> relu -> conv3x3 -> + skip -> relu (no bias, no batch norm: the
convolutions are what is compared), float32 NCHW; one step is its forward and the backward
to the input and both weights. The two ops sets run in interleaved blocks of back-to-back
steps (A A A, B B B, ...), the first step of each block discarded (it wakes the threads),
the mean of the rest is the block's time, and the median over blocks is reported, with the
same thread count for both (DESIGN.md, "how to measure"). A benchmark, not a test: it
checks only that the two convolutions and their gradients agree before it times anything.

convkit's kernels run on PyTorch's OpenMP threads (convkit.torch.share_torch_threads);
--own-threads times them on convkit's own pool instead, as before that existed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import convkit
import convkit.torch
from convkit.bench.timing import steady_heap


def block(ops, x, w1, w2):
    y = torch.relu(ops.conv2d(x, w1, None, 1, 1))
    return torch.relu(ops.conv2d(y, w2, None, 1, 1) + x)


def step(ops, x, w1, w2, grad_out):
    return torch.autograd.grad(block(ops, x, w1, w2), (x, w1, w2), grad_out)


def check_conv(x, w, grad_out):
    """convkit.torch's conv2d and its two gradients against PyTorch's, before any timing.

    Per convolution, not through the block: where a ReLU's input is within rounding of
    zero the two libraries may take opposite sides (Winograd rounds differently from a
    direct convolution), and the block's gradients then differ by a whole term there."""
    results = []
    for ops in (convkit.torch, F):
        y = ops.conv2d(x, w, None, 1, 1)
        results.append((y.detach(), *torch.autograd.grad(y, (x, w), grad_out)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def step_seconds(ops, tensors, calls: int) -> float:
    """Mean time of a block's steps after its first."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        step(ops, *tensors)
        times.append(time.perf_counter() - start)
    return statistics.mean(times[1:])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=7, help="interleaved blocks per ops set (>= 7)")
    parser.add_argument("--calls", type=int, default=3, help="steps per block, the first discarded")
    parser.add_argument("--own-threads", action="store_true", help="convkit on its own pool, not PyTorch's threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)
    shared = convkit.torch.share_torch_threads(not args.own_threads)
    heap = "steady heap" if steady_heap() else "heap as glibc leaves it"

    g = torch.Generator().manual_seed(0)
    n, c, s = args.batch, args.channels, args.size
    x = torch.randn(n, c, s, s, generator=g).requires_grad_()
    w1, w2 = (torch.randn(c, c, 3, 3, generator=g).mul_((2 / (9 * c)) ** 0.5).requires_grad_() for _ in range(2))
    tensors = (x, w1, w2, torch.randn(n, c, s, s, generator=g))
    check_conv(x, w1, tensors[3])

    sets = {"convkit": convkit.torch, "torch": F}
    blocks = {name: [] for name in sets}
    for _ in range(args.blocks):
        for name, ops in sets.items():
            blocks[name].append(step_seconds(ops, tensors, args.calls))
    flops = 3 * 2 * 2 * n * c * s * s * c * 9  # 2 convs x (forward, grad-input, grad-weight), FMA = 2
    print(f"ResNet basic block, N={n} C={c} {s}x{s}, float32, {args.threads} threads, "
          f"median of {args.blocks} blocks of {args.calls - 1} steps (convkit ISA {convkit.get_isa()}, "
          f"{'on PyTorch' if shared else 'on its own'} threads, {heap})")
    median = {name: statistics.median(times) for name, times in blocks.items()}
    for name, t in median.items():
        print(f"  {name:8s} {t * 1e3:9.1f} ms/step  {flops / t / 1e9:7.1f} GFLOP/s")
    ratios = [a / b for a, b in zip(blocks["convkit"], blocks["torch"])]
    print(f"  convkit / torch step time: {median['convkit'] / median['torch']:.2f} "
          f"(per-block ratios {min(ratios):.2f} .. {max(ratios):.2f})")
    return median


if __name__ == "__main__":
    main()
