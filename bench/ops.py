"""What one suite layer runs in one direction: its inputs, the calls that time it, its work.

A ``Case`` holds the inputs of one (layer, direction), made once, and hands out a
zero-argument callable per implementation: ``convkit_fn(algo)`` (every registered
algorithm, "reference" included, through the public API a user calls) and ``torch_fn()``
(torch.nn.functional, or the aten backward op PyTorch's autograd itself calls). Each
callable returns a tuple of NumPy arrays, compared with the reference's.

Work: FLOPs for convolutions, a multiply-add counted as 2, the backward (grad-input +
grad-weight) as 2x the forward; bytes read + written for pooling.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import convkit
from convkit import _args

DIRECTIONS = ("fwd", "bwd")

# The registry primitives each (op, direction) is composed of (see convkit._registry):
# an algorithm can run a case when it registers all of them.
PRIMITIVES = {
    ("conv2d", "fwd"): ("conv2d_forward",),
    ("conv2d", "bwd"): ("conv2d_grad_input", "conv2d_grad_weight"),
    ("conv_transpose2d", "fwd"): ("conv2d_grad_input",),
    ("conv_transpose2d", "bwd"): ("conv2d_forward", "conv2d_grad_weight"),
    ("max_pool2d", "fwd"): ("max_pool2d",),
    ("max_pool2d", "bwd"): ("max_pool2d_backward",),
    ("avg_pool2d", "fwd"): ("avg_pool2d",),
    ("avg_pool2d", "bwd"): ("avg_pool2d_backward",),
    ("global_avg_pool2d", "fwd"): ("avg_pool2d",),
    ("global_avg_pool2d", "bwd"): ("avg_pool2d_backward",),
}
GFLOPS, GBS = "GFLOP/s", "GB/s"


def algorithms(op: str, direction: str, device: str = "cpu") -> list:
    """Registered algorithms that provide every primitive of (op, direction), in registry order."""
    needed = PRIMITIVES[(op, direction)]
    rows = convkit.implementations(device)
    have = {(impl.primitive, impl.algo) for impl in rows}
    ordered = dict.fromkeys(impl.algo for impl in rows)
    return [a for a in ordered if all((p, a) in have for p in needed)]


def _uniform(rng, shape):
    # Uniform in [-1, 1): no ties for max pooling, and sums of both signs as in training.
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


@dataclass
class Case:
    layer: object
    direction: str
    arrays: dict
    work: float  # FLOPs or bytes of one call
    unit: str
    _convkit: object
    _torch: object

    @property
    def primitives(self) -> tuple:
        return PRIMITIVES[(self.layer.op, self.direction)]

    def convkit_fn(self, algo: str):
        call, a = self._convkit, self.arrays
        return lambda: tuple(np.asarray(r) for r in call(a, algo))

    def torch_fn(self):
        import torch

        tensors = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        call = self._torch

        def run():
            with torch.no_grad():
                return tuple(r.numpy() for r in call(torch, tensors))

        return run


def make_case(layer, direction: str, seed: int = 0) -> Case:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    rng = np.random.default_rng(seed)
    return _BUILDERS[layer.op](layer, direction, rng)


# ----------------------------------------------------------------------- convolutions
def _conv2d(layer, direction, rng):
    p = layer.params
    s, pad, d, g = p["stride"], p["padding"], p["dilation"], p["groups"]
    w_shape = (layer.K, layer.C // g, *p["kernel"])
    geom = _args.conv_geometry((layer.N, layer.C, layer.H, layer.W), w_shape, s, pad, d, g)
    arrays = {"x": _uniform(rng, (layer.N, layer.C, layer.H, layer.W)), "w": _uniform(rng, w_shape)}
    if direction == "fwd":
        return Case(layer, direction, arrays, geom.flops, GFLOPS,
                    lambda a, algo: (convkit.conv2d(a["x"], a["w"], None, s, pad, d, g, algo=algo),),
                    lambda torch, t: (torch.nn.functional.conv2d(t["x"], t["w"], None, s, pad, d, g),))
    arrays["gy"] = _uniform(rng, (geom.N, geom.K, geom.OH, geom.OW))
    return Case(layer, direction, arrays, 2 * geom.flops, GFLOPS,
                lambda a, algo: convkit.conv2d_backward(a["gy"], a["x"], a["w"], s, pad, d, g, need_bias=False,
                                                        algo=algo)[:2],
                lambda torch, t: torch.ops.aten.convolution_backward(
                    t["gy"], t["x"], t["w"], None, s, pad, d, False, [0, 0], g, [True, True, False])[:2])


def _conv_transpose2d(layer, direction, rng):
    p = layer.params
    s, pad, op, d, g = p["stride"], p["padding"], p["output_padding"], p["dilation"], p["groups"]
    kh, kw = p["kernel"]
    w_shape = (layer.C, layer.K // g, kh, kw)
    out_hw = [(n - 1) * si - 2 * pi + di * (k - 1) + oi + 1
              for n, si, pi, di, k, oi in zip((layer.H, layer.W), s, pad, d, (kh, kw), op)]
    # Every input pixel meets every tap of its group's K/g output channels.
    flops = 2 * layer.N * layer.C * layer.H * layer.W * (layer.K // g) * kh * kw
    arrays = {"x": _uniform(rng, (layer.N, layer.C, layer.H, layer.W)), "w": _uniform(rng, w_shape)}
    if direction == "fwd":
        return Case(layer, direction, arrays, flops, GFLOPS,
                    lambda a, algo: (convkit.conv_transpose2d(a["x"], a["w"], None, s, pad, op, g, d, algo=algo),),
                    lambda torch, t: (torch.nn.functional.conv_transpose2d(t["x"], t["w"], None, s, pad, op, g, d),))
    arrays["gy"] = _uniform(rng, (layer.N, layer.K, *out_hw))
    return Case(layer, direction, arrays, 2 * flops, GFLOPS,
                lambda a, algo: convkit.conv_transpose2d_backward(a["gy"], a["x"], a["w"], s, pad, op, g, d,
                                                                  need_bias=False, algo=algo)[:2],
                lambda torch, t: torch.ops.aten.convolution_backward(
                    t["gy"], t["x"], t["w"], None, s, pad, d, True, op, g, [True, True, False])[:2])


# ---------------------------------------------------------------------------- pooling
def _pool_geom(layer, **extra):
    p = layer.params
    return _args.pool_geometry((layer.N, layer.C, layer.H, layer.W), p["kernel"], p["stride"], p["padding"],
                               p.get("dilation", 1), p["ceil_mode"], **extra)


def _max_pool2d(layer, direction, rng):
    p = layer.params
    k, pad, d, ceil = p["kernel"], p["padding"], p["dilation"], p["ceil_mode"]
    geom = _pool_geom(layer)
    s = geom.stride
    x = _uniform(rng, (layer.N, layer.C, layer.H, layer.W))
    if direction == "fwd":
        return Case(layer, direction, {"x": x}, 4 * (x.size + geom.N * geom.C * geom.OH * geom.OW), GBS,
                    lambda a, algo: (convkit.max_pool2d(a["x"], k, s, pad, d, ceil, algo=algo),),
                    lambda torch, t: (torch.nn.functional.max_pool2d(t["x"], k, s, pad, d, ceil),))
    _, idx = convkit.reference.max_pool2d(x, k, s, pad, d, ceil, return_indices=True)
    gy = _uniform(rng, idx.shape)
    # read grad_output and the int64 indices, write grad_input
    nbytes = 4 * gy.size + 8 * idx.size + 4 * x.size
    return Case(layer, direction, {"x": x, "gy": gy, "idx": idx}, nbytes, GBS,
                lambda a, algo: (convkit.max_pool2d_backward(a["gy"], a["x"], k, s, pad, d, ceil, indices=a["idx"],
                                                             algo=algo),),
                lambda torch, t: (torch.ops.aten.max_pool2d_with_indices_backward(
                    t["gy"], t["x"], k, s, pad, d, ceil, t["idx"]),))


def _avg_pool2d(layer, direction, rng):
    p = layer.params
    k, pad, ceil, cip = p["kernel"], p["padding"], p["ceil_mode"], p["count_include_pad"]
    geom = _pool_geom(layer, count_include_pad=cip)
    s = geom.stride
    x = _uniform(rng, (layer.N, layer.C, layer.H, layer.W))
    nbytes = 4 * (x.size + geom.N * geom.C * geom.OH * geom.OW)  # both ways: one tensor read, the other written
    if direction == "fwd":
        return Case(layer, direction, {"x": x}, nbytes, GBS,
                    lambda a, algo: (convkit.avg_pool2d(a["x"], k, s, pad, ceil, cip, algo=algo),),
                    lambda torch, t: (torch.nn.functional.avg_pool2d(t["x"], k, s, pad, ceil, cip),))
    gy = _uniform(rng, (geom.N, geom.C, geom.OH, geom.OW))
    return Case(layer, direction, {"x": x, "gy": gy}, nbytes, GBS,
                lambda a, algo: (convkit.avg_pool2d_backward(a["gy"], a["x"], k, s, pad, ceil, cip, algo=algo),),
                lambda torch, t: (torch.ops.aten.avg_pool2d_backward(t["gy"], t["x"], k, s, pad, ceil, cip, None),))


def _global_avg_pool2d(layer, direction, rng):
    x = _uniform(rng, (layer.N, layer.C, layer.H, layer.W))
    nbytes = 4 * (x.size + layer.N * layer.C)
    if direction == "fwd":
        return Case(layer, direction, {"x": x}, nbytes, GBS,
                    lambda a, algo: (convkit.global_avg_pool2d(a["x"], algo=algo),),
                    lambda torch, t: (torch.nn.functional.adaptive_avg_pool2d(t["x"], 1),))
    gy = _uniform(rng, (layer.N, layer.C, 1, 1))
    return Case(layer, direction, {"x": x, "gy": gy}, nbytes, GBS,
                lambda a, algo: (convkit.global_avg_pool2d_backward(a["gy"], a["x"], algo=algo),),
                lambda torch, t: (torch.ops.aten._adaptive_avg_pool2d_backward(t["gy"], t["x"]),))


_BUILDERS = {"conv2d": _conv2d, "conv_transpose2d": _conv_transpose2d, "max_pool2d": _max_pool2d,
             "avg_pool2d": _avg_pool2d, "global_avg_pool2d": _global_avg_pool2d}
