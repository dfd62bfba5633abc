"""No leaks: 20,000 calls of each public op (every compiled CPU algorithm, both layouts)
leave the process's resident memory and Python's allocated blocks flat after a warm-up,
and so do 20,000 calls that the compiled code refuses (its error paths).

Small shapes keep it quick; the arrays each call allocates (output, workspace) are a
few KB, so a leak of any of them would grow the RSS by tens of MB.
"""
from __future__ import annotations

import gc
import resource
import sys

import numpy as np
import pytest

import convkit
from helpers import cpu_algos
from op_cases import under_asan
from public_ops import OPS, to_nhwc

CALLS = 20_000
WARMUP = 2_000
MAX_RSS_GROWTH = 4 << 20  # bytes: a leak of >= 200 bytes a call shows
MAX_BLOCK_GROWTH = 1_000  # Python objects: a leaked object a call would be 18,000


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _assert_flat(calls, what):
    """Runs the calls round-robin, CALLS in all; memory after the warm-up must stay flat."""
    for i in range(WARMUP):
        calls[i % len(calls)]()
    gc.collect()
    rss0, blocks0 = _rss(), sys.getallocatedblocks()
    for i in range(CALLS - WARMUP):
        calls[i % len(calls)]()
    gc.collect()
    rss, blocks = _rss() - rss0, sys.getallocatedblocks() - blocks0
    assert blocks < MAX_BLOCK_GROWTH, f"{what}: {blocks} more Python blocks after {CALLS - WARMUP} calls"
    # AddressSanitizer holds freed memory in quarantine, so RSS grows under it by design
    assert rss < MAX_RSS_GROWTH or under_asan(), f"{what}: RSS grew by {rss / 2**20:.1f} MiB over {CALLS - WARMUP} calls"


def _compiled_algos(op):
    return [a for a in cpu_algos(*op.primitives) if a != "reference"]


@pytest.mark.parametrize("op", [op for op in OPS if _compiled_algos(op)], ids=lambda op: op.id)
def test_repeated_calls_do_not_leak(op):
    arrays = op.arrays(np.float32)
    nhwc = [to_nhwc(a) if act else a for a, act in zip(arrays, op.activations)]
    calls = [lambda algo=algo, args=args, layout=layout: op.run(args, algo=algo, layout=layout)
             for algo in _compiled_algos(op) for args, layout in ((arrays, "NCHW"), (nhwc, "NHWC"))]
    _assert_flat(calls, f"{op.id} ({', '.join(_compiled_algos(op))})")


def _refused_call(row):
    """A call of the row that its compiled code refuses: arrays one row short of the
    geometry (the binding re-checks shapes after allocating its output)."""
    rng = np.random.default_rng(0)
    if row.primitive.startswith("conv2d"):
        geom = convkit._args.conv_geometry((2, 4, 9, 9), (4, 2, 3, 3), 1, 1, 1, 2)
        x, w = rng.random((2, 4, 9, 9), np.float32), rng.random((4, 2, 3, 3), np.float32)
        short = rng.random((2, 4, 8, 9), np.float32)
        args = {"conv2d_forward": (x, w[:3], None, geom, None, "NCHW"),
                "conv2d_grad_input": (short, w, geom, "NCHW"),
                "conv2d_grad_weight": (short, x, geom, "NCHW")}[row.primitive]
    elif row.primitive.startswith("maxout"):
        x = rng.random((2, 4, 9, 9), np.float32)
        args = (x, 3, "NCHW") if row.primitive == "maxout2d" else (np.ascontiguousarray(x[:, :1]), x, 2, "NCHW")
    else:
        geom = convkit._args.pool_geometry((2, 4, 9, 9), 3, 2, 1, 1, False)
        short = rng.random((2, 4, geom.OH - 1, geom.OW), np.float32)
        args = {"max_pool2d": (rng.random((2, 4, 9), np.float32), geom, "NCHW"),
                "max_pool2d_backward": (short, np.zeros(short.shape, np.int64), geom, "NCHW"),
                "avg_pool2d": (rng.random((2, 4, 9), np.float32), geom, "NCHW"),
                "avg_pool2d_backward": (short, geom, "NCHW")}[row.primitive]

    def call():
        try:
            row.fn(*args)
        except (TypeError, ValueError):
            return
        raise AssertionError(f"{row.primitive}/{row.algo} accepted arrays that disagree with the geometry")
    return call


@pytest.mark.parametrize("row", [r for r in convkit.implementations("cpu") if r.algo != "reference"],
                         ids=lambda r: f"{r.primitive}-{r.algo}")
def test_refused_calls_do_not_leak(row):
    _assert_flat([_refused_call(row)], f"refused {row.primitive}/{row.algo}")
