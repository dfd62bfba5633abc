"""`convkit check`: every registered implementation against the reference, random shapes.

For each registry primitive, `count` random small cases are drawn from one seed (so every
implementation of a primitive sees the same cases): odd sizes, 1x1 images, kernels larger
than the image with padding, asymmetric padding, strides, dilations, groups and depthwise,
both layouts, float32 and float64, bias and the fused ReLU. Each implementation runs
through the public API with its algo= and device=; the reference runs the same call in
float64 and the results must agree within the project's tolerance (tolerance.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import convkit
from convkit import _registry

from .tolerance import compare

REFERENCE = "reference"


@dataclass
class Outcome:
    primitive: str
    algo: str
    device: str
    cases: int = 0
    passed: int = 0
    worst: float = 0.0
    failures: list = field(default_factory=list)  # "case i (shapes): what differs"
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.passed == self.cases


# ------------------------------------------------------------------- random cases
def _conv_case(rng, dtype) -> dict:
    if rng.random() < 0.25:  # depthwise, channel multiplier 1..2
        groups = C = int(rng.integers(1, 7))
        K = C * int(rng.integers(1, 3))
    else:
        groups = int(rng.choice([1, 1, 2, 3]))
        C, K = groups * int(rng.integers(1, 5)), groups * int(rng.integers(1, 5))
    N = int(rng.integers(1, 3))
    H, W, kh, kw = (int(v) for v in (*rng.integers(1, 13, 2), *rng.integers(1, 6, 2)))
    stride = tuple(int(v) for v in rng.integers(1, 4, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    pad = [int(v) for v in rng.integers(0, 4, 4)]  # (top, bottom, left, right)
    # grow the bottom/right padding until the dilated kernel fits: kernels larger than
    # the image are then cases where most taps fall in the padding
    pad[1] += max(0, dilation[0] * (kh - 1) + 1 - (H + pad[0] + pad[1]))
    pad[3] += max(0, dilation[1] * (kw - 1) + 1 - (W + pad[2] + pad[3]))
    geom = convkit._args.conv_geometry((N, C, H, W), (K, C // groups, kh, kw), stride, tuple(pad), dilation, groups)
    return {"x": _data(rng, (N, C, H, W), dtype), "w": _data(rng, (K, C // groups, kh, kw), dtype),
            "b": _data(rng, (K,), dtype) if rng.random() < 0.5 else None,
            "gy": _data(rng, (N, K, geom.OH, geom.OW), dtype),
            "args": (stride, tuple(pad), dilation, groups),
            "activation": "relu" if rng.random() < 0.3 else None}


def _pool_case(rng, dtype, with_dilation: bool) -> dict:
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    stride = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 4, 2))
    padding = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1)))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2)) if with_dilation else (1, 1)
    # the image at least as large as the padded window needs
    H = max(int(rng.integers(1, 13)), dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    W = max(int(rng.integers(1, 13)), dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    N, C = int(rng.integers(1, 3)), int(rng.integers(1, 5))
    geom = convkit._args.pool_geometry((N, C, H, W), (kh, kw), stride, padding, dilation, bool(rng.random() < 0.5))
    return {"x": _data(rng, (N, C, H, W), dtype), "gy": _data(rng, (N, C, geom.OH, geom.OW), dtype),
            "kernel": (kh, kw), "stride": stride, "padding": padding, "dilation": dilation,
            "ceil_mode": geom.ceil_mode, "count_include_pad": bool(rng.random() < 0.5),
            "divisor_override": int(rng.integers(1, 6)) if rng.random() < 0.2 else None}


def _data(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


# ------------------------------------------- one public call per registry primitive
def _conv_call(c, a, kw):
    return convkit.conv2d(a["x"], a["w"], a["b"], *c["args"], activation=c["activation"], **kw),


def _grad_input_call(c, a, kw):
    return convkit.conv2d_backward(a["gy"], a["x"], a["w"], *c["args"], need_weight=False, need_bias=False, **kw)[0],


def _grad_weight_call(c, a, kw):
    return convkit.conv2d_backward(a["gy"], a["x"], a["w"], *c["args"], need_input=False, need_bias=False, **kw)[1],


def _max_args(c):
    return c["kernel"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"]


def _avg_args(c):
    return c["kernel"], c["stride"], c["padding"], c["ceil_mode"], c["count_include_pad"], c["divisor_override"]


def _max_pool_call(c, a, kw):
    return convkit.max_pool2d(a["x"], *_max_args(c), return_indices=True, **kw)


def _max_pool_backward_call(c, a, kw):
    return convkit.max_pool2d_backward(a["gy"], a["x"], *_max_args(c), indices=c["indices"], **kw),


def _avg_pool_call(c, a, kw):
    return convkit.avg_pool2d(a["x"], *_avg_args(c), **kw),


def _avg_pool_backward_call(c, a, kw):
    return convkit.avg_pool2d_backward(a["gy"], a["x"], *_avg_args(c), **kw),


CONV, MAX, AVG = "conv", "max", "avg"
# primitive -> (kind of case, the public call that runs exactly that primitive)
CALLS = {
    "conv2d_forward": (CONV, _conv_call),
    "conv2d_grad_input": (CONV, _grad_input_call),
    "conv2d_grad_weight": (CONV, _grad_weight_call),
    "max_pool2d": (MAX, _max_pool_call),
    "max_pool2d_backward": (MAX, _max_pool_backward_call),
    "avg_pool2d": (AVG, _avg_pool_call),
    "avg_pool2d_backward": (AVG, _avg_pool_backward_call),
}


def make_case(primitive: str, seed: int, i: int) -> dict:
    """Case i of a primitive: the same for every implementation; float32 and float64
    alternate, NHWC one case in three."""
    rng = np.random.default_rng([seed, _registry.PRIMITIVES.index(primitive), i])
    dtype = np.float32 if i % 2 == 0 else np.float64
    kind = CALLS[primitive][0]
    case = _conv_case(rng, dtype) if kind == CONV else _pool_case(rng, dtype, with_dilation=kind == MAX)
    case["layout"] = "NHWC" if i % 3 == 2 else "NCHW"
    case["dtype"] = np.dtype(dtype)
    if primitive == "max_pool2d_backward":  # the indices a forward pass found, from the reference
        _, case["indices"] = convkit.max_pool2d(case["x"], *_max_args(case), return_indices=True, algo=REFERENCE)
    arrays = {k: case.pop(k) for k in ("x", "w", "b", "gy") if k in case}
    if case["layout"] == "NHWC":
        # activations change layout; weights keep torch's shape in either
        arrays = {k: v.transpose(0, 2, 3, 1) if k in ("x", "gy") else v for k, v in arrays.items()}
        if "indices" in case:
            case["indices"] = np.ascontiguousarray(case["indices"].transpose(0, 2, 3, 1))
    case["arrays"] = arrays
    return case


def describe(case) -> str:
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in case["arrays"].items() if v is not None)
    params = {k: v for k, v in case.items() if k not in ("arrays", "indices")}
    return f"{shapes}; {params}"


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def run_one(primitive: str, case: dict, algo: str, device: str) -> tuple:
    call = CALLS[primitive][1]
    kw = {"layout": case["layout"], "algo": algo, "device": device}
    return tuple(_host(r) for r in call(case, case["arrays"], kw))


def truth(primitive: str, case: dict) -> tuple:
    """The reference in float64 on the same values."""
    as64 = {k: None if v is None else v.astype(np.float64) for k, v in case["arrays"].items()}
    return run_one(primitive, {**case, "arrays": as64}, REFERENCE, "cpu")


def devices() -> tuple:
    """(devices to check, why any is left out)."""
    skipped = {}
    try:
        from numba import cuda

        has_gpu = cuda.is_available()
    except Exception:  # noqa: BLE001  (no Numba, or a broken driver: no CUDA)
        has_gpu = False
    if not has_gpu:
        skipped["cuda"] = "no CUDA device"
    elif not _registry.implementations("cuda"):
        reasons = "; ".join(f"{m}: {r}" for m, r in _registry.unavailable("cuda").items())
        skipped["cuda"] = f"no CUDA implementations ({reasons or 'none registered'})"
    return tuple(d for d in _registry.DEVICES if d not in skipped), skipped


def sweep(count: int = 20, seed: int = 0, device_list=None) -> tuple:
    """(outcomes, notes): every implementation of the given devices, `count` cases each."""
    found, skipped = devices()
    wanted = found if device_list is None else [d for d in device_list if d in found]
    notes = [f"{d}: skipped ({why})" for d, why in skipped.items() if device_list is None or d in device_list]
    notes += [f"{d}: {m} unavailable: {r}" for d in wanted for m, r in _registry.unavailable(d).items()]
    impls = [i for d in wanted for i in convkit.implementations(d)]
    outcomes = []
    for primitive in _registry.PRIMITIVES:
        rows = [i for i in impls if i.primitive == primitive]
        if not rows:
            continue
        if primitive not in CALLS:  # a primitive added to the registry after this sweep was written
            outcomes += [Outcome(primitive, i.algo, i.device, skipped=True) for i in rows]
            notes.append(f"{primitive}: NOT CHECKED, convkit check has no random case for it (add one to CALLS "
                         f"in convkit/bench/check.py)")
            continue
        cases = [make_case(primitive, seed, i) for i in range(count)]
        truths = [truth(primitive, c) for c in cases]
        for impl in rows:
            out = Outcome(primitive, impl.algo, impl.device)
            outcomes.append(out)
            if impl.algo == REFERENCE and impl.device == "cpu":
                continue  # the truth itself: listed, not compared with itself
            uncovered = 0
            for i, (case, want) in enumerate(zip(cases, truths)):
                try:
                    ok, worst, detail = compare(run_one(primitive, case, impl.algo, impl.device), want, case["dtype"])
                except _registry.NotCovered:  # a shape the algorithm refuses (Winograd: 3x3 only): not a case
                    uncovered += 1
                    continue
                except Exception as exc:  # noqa: BLE001  (an exception is a failed case, reported)
                    ok, worst, detail = False, None, f"{type(exc).__name__}: {exc}"
                out.cases += 1
                out.passed += ok
                out.worst = max(out.worst, worst if worst is not None else float("inf"))
                if not ok:
                    out.failures.append(f"case {i} ({describe(case)}): {detail}")
            if uncovered:
                notes.append(f"{primitive} {impl.algo} {impl.device}: {uncovered} of {count} cases not covered "
                             f"by the algorithm (NotCovered), not run")
    return outcomes, notes


def table(outcomes: list, notes: list, count: int, seed: int) -> str:
    head = ("primitive", "algo", "device", "cases", "passed", "worst (x tol)", "status")
    body = [head]
    for o in outcomes:
        is_truth = o.algo == REFERENCE and o.device == "cpu"
        status = "truth" if is_truth else "SKIP" if o.skipped else "PASS" if o.ok else "FAIL"
        body.append((o.primitive, o.algo, o.device, str(o.cases), str(o.passed),
                     "-" if is_truth or o.skipped else f"{o.worst:.3g}", status))
    widths = [max(len(r[i]) for r in body) for i in range(len(head))]
    lines = [f"convkit check: {count} random cases per primitive (seed {seed}), each implementation against "
             f"the float64 reference (float32 rtol/atol 1e-4, float64 1e-10, scaled by max|ref|)", ""]
    for n, r in enumerate(body):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"* {n}" for n in notes]
    failed = [o for o in outcomes if not o.ok]
    if failed:
        lines += ["", f"!!! {len(failed)} implementation(s) FAILED:"]
        lines += [f"!!!   {o.primitive} {o.algo} {o.device}: {f}" for o in failed for f in o.failures[:3]]
    else:
        lines += ["", f"all {sum(o.cases for o in outcomes)} checks passed"]
    return "\n".join(lines)
