"""One table of convkit's public ops for the reliability tests.

Each public op of ``convkit.functional`` has a hypothesis strategy here that draws a
random *valid* call (shapes, stride, padding, dilation, groups, ...) and knows its float64
answer from ``convkit.reference``. The property, thread, leak and determinism tests all
walk this one table, and every CPU algorithm the registry lists for the primitives an op
runs (``convkit.implementations("cpu")``), so a new op or a new algorithm is tested by all
of them as soon as it is registered.

A ``Case`` holds NCHW arrays; ``Case.call`` moves the activation-shaped ones to the
requested layout (optionally as non-contiguous views), runs the op and moves the results
back, so every comparison happens in NCHW.
"""
from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from hypothesis import strategies as st

import convkit
from convkit import functional
from convkit import reference as ref

LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.float32, np.float64)

# The registry primitives each public op runs; it is tested with every algorithm that
# implements all of them (plus "auto").
_CONV_BACKWARD = ("conv2d_grad_input", "conv2d_grad_weight")
OP_PRIMITIVES = {
    "conv2d": ("conv2d_forward",),
    "conv2d_backward": _CONV_BACKWARD,
    "conv_transpose2d": ("conv2d_grad_input",),
    "conv_transpose2d_backward": ("conv2d_forward", "conv2d_grad_weight"),
    "depthwise_conv2d": ("conv2d_forward",),
    "depthwise_conv2d_backward": _CONV_BACKWARD,
    "separable_conv2d": ("conv2d_forward",),
    "separable_conv2d_backward": ("conv2d_forward", *_CONV_BACKWARD),
    "max_pool2d": ("max_pool2d",),
    "max_pool2d_backward": ("max_pool2d", "max_pool2d_backward"),
    "avg_pool2d": ("avg_pool2d",),
    "avg_pool2d_backward": ("avg_pool2d_backward",),
    "global_avg_pool2d": ("avg_pool2d",),
    "global_avg_pool2d_backward": ("avg_pool2d_backward",),
    "global_max_pool2d": ("max_pool2d",),
    "global_max_pool2d_backward": ("max_pool2d", "max_pool2d_backward"),
    "maxout2d": ("maxout2d",),
    "maxout2d_backward": ("maxout2d_backward",),
}


def public_ops() -> list:
    return list(functional.__all__)


def cpu_algos(op: str) -> list:
    """Registered CPU algorithms that implement every primitive of ``op`` for every call.
    An algorithm that covers only some shapes (a row with ``covers``, e.g. Winograd's
    3x3 stride 1) is left out: random cases would mostly be refused (NotCovered); it is
    tested on its own grid (tests/test_winograd.py)."""
    rows = [r for r in convkit.implementations("cpu") if r.covers is None]
    have = [{r.algo for r in rows if r.primitive == p} for p in OP_PRIMITIVES[op]]
    common = set.intersection(*have) if have else set()
    ordered = list(dict.fromkeys(r.algo for r in rows))
    return [a for a in ordered if a in common]


def op_algo_pairs(include_auto=True, compiled_only=False) -> list:
    """(op, algo) for every public op with a case and every CPU algorithm it can run."""
    pairs = []
    for op in public_ops():
        if op not in OP_PRIMITIVES:
            continue
        algos = [a for a in cpu_algos(op) if not (compiled_only and a == "reference")]
        pairs += [(op, a) for a in algos + (["auto"] if include_auto and algos else [])]
    return pairs


def isas() -> list:
    """Instruction sets this CPU can run, from the narrowest up."""
    detected = convkit._cpu.detected_isa()
    order = ["scalar", "avx2", "avx512"]
    return order[: order.index(detected) + 1] if detected in order else ["scalar"]


@contextlib.contextmanager
def _temporarily(get, set_, value):
    old = get()
    set_(value)
    try:
        yield
    finally:
        set_(old)


def isa_cap(name: str):
    """convkit.set_isa(name) for a with-block."""
    return _temporarily(convkit.get_isa, convkit.set_isa, name)


def num_threads(n: int):
    """convkit.set_num_threads(n) for a with-block."""
    return _temporarily(convkit.get_num_threads, convkit.set_num_threads, n)


# ----------------------------------------------------------------------------- arrays
def to_layout(a, layout):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


def from_layout(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def strided_view(a):
    """The same values as a non-contiguous view (every other element of a wider array)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


def uniform(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)


def distinct(rng, shape, dtype):
    """Values without ties (exactly representable in float32), so argmax is unambiguous."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) / 1024.0).reshape(shape).astype(dtype)


@dataclass
class Case:
    """One valid call of a public op, its arrays in NCHW, and the reference answer."""

    op: str
    arrays: dict  # positional array arguments by name, NCHW (None allowed)
    params: dict  # the other arguments, by keyword
    acts: tuple  # names of the activation-shaped arrays (moved to the layout)
    outs: tuple  # per output: "act" (moved back from the layout), "param" or "index"
    reference: Callable  # () -> tuple of float64 / int64 NCHW outputs
    dtype: type = np.float32
    notes: dict = field(default_factory=dict)

    def args(self, layout="NCHW", contiguous=True):
        out = []
        for name, a in self.arrays.items():
            if a is not None and name in self.acts:
                a = to_layout(a, layout)
                if not contiguous:
                    a = strided_view(a)
            out.append(a)
        return out

    def call_raw(self, layout="NCHW", algo="auto", contiguous=True):
        """Run the op; its results as a tuple, as returned (in the layout)."""
        got = getattr(convkit, self.op)(*self.args(layout, contiguous), **self.params, layout=layout, algo=algo)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(self.outs), f"{self.op} returned {len(got)} results, expected {len(self.outs)}"
        return got

    def to_nchw(self, got, layout):
        return tuple(from_layout(g, layout) if kind != "param" and g is not None else g
                     for g, kind in zip(got, self.outs))

    def call(self, layout="NCHW", algo="auto", contiguous=True):
        """Run the op; results as a tuple, activation-shaped ones back in NCHW."""
        return self.to_nchw(self.call_raw(layout, algo, contiguous), layout)

    def describe(self) -> str:
        args = {n: a.shape if isinstance(a, np.ndarray) else a for n, a in self.arrays.items()}
        return f"{self.op}({args}, {self.params}, dtype={np.dtype(self.dtype).name})"


def check_matches(case: Case, got, expected=None):
    """Every output equal to the reference: float32 within 1e-4, float64 within 1e-10."""
    expected = case.reference() if expected is None else expected
    tol = 1e-4 if case.dtype == np.float32 else 1e-10
    for i, (g, e, kind) in enumerate(zip(got, expected, case.outs)):
        where = f"output {i} of {case.describe()}"
        assert g is not None, where
        assert g.shape == e.shape, f"{where}: shape {g.shape}, expected {e.shape}"
        if kind == "index":
            assert g.dtype == np.int64, where
            np.testing.assert_array_equal(g, e, err_msg=where)
            continue
        assert g.dtype == case.dtype, f"{where}: dtype {g.dtype}"
        scale = max(1.0, float(np.abs(e).max())) if e.size else 1.0
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * scale, err_msg=where)


# ------------------------------------------------------------------------- strategies
small = st.integers(1, 3)


@dataclass(frozen=True)
class Sizes:
    """How big the drawn arrays get: batch range, channels per group, image sizes."""

    batch: tuple
    channels: int
    images: tuple  # (lo, hi) of the larger image sizes drawn (small ones come too)


SMALL = Sizes(batch=(0, 3), channels=4, images=(13, 41))  # property tests: edges, quick
LARGE = Sizes(batch=(1, 4), channels=16, images=(24, 64))  # enough work to split over threads


@st.composite
def _padding(draw):
    """Any conv padding form, and the numeric ones as (top, bottom, left, right)."""
    form = draw(st.sampled_from(["int", "pair", "quad", "same", "valid", "SAME"]))
    if form == "int":
        p = draw(st.integers(0, 3))
        return p, (p, p, p, p)
    if form == "pair":
        p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        return p, (p[0], p[0], p[1], p[1])
    if form == "quad":
        p = tuple(draw(st.integers(0, 3)) for _ in range(4))
        return p, p
    return form, (0, 0, 0, 0) if form == "valid" else None  # "same" always fits


def _extent(k, d):
    return d * (k - 1) + 1


@st.composite
def _image_size(draw, extent, pad_before_after, sizes):
    """A size the kernel fits in once padded: small ones, and some across vector widths."""
    low = max(1, extent - sum(pad_before_after)) if pad_before_after else 1
    lo, hi = sizes.images
    return draw(st.one_of(st.integers(low, low + 8), st.integers(max(low, lo), max(low, lo) + hi - lo)))


@st.composite
def conv_geometry(draw, depthwise=False, sizes=SMALL):
    per_group = st.integers(1, sizes.channels)
    if depthwise:
        groups, Cg, Kg = draw(st.integers(1, 2 * sizes.channels)), 1, draw(small)
    else:
        groups, Cg, Kg = draw(small), draw(per_group), draw(per_group)
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(small), draw(small))
    dilation = (draw(small), draw(small))
    padding, quad = draw(_padding())
    H = draw(_image_size(_extent(kh, dilation[0]), quad[:2] if quad else None, sizes))
    W = draw(_image_size(_extent(kw, dilation[1]), quad[2:] if quad else None, sizes))
    return dict(N=draw(st.integers(*sizes.batch)), C=groups * Cg, K=groups * Kg, H=H, W=W, kh=kh, kw=kw, groups=groups,
                stride=_maybe_int(draw, stride), padding=padding, dilation=_maybe_int(draw, dilation))


def _maybe_int(draw, pair):
    """A pair, or an int when both are equal and the draw says so (both forms are API)."""
    return pair[0] if pair[0] == pair[1] and draw(st.booleans()) else pair


def _conv_case(op, g, seed, dtype, with_bias, activation, depthwise=False):
    rng = np.random.default_rng(seed)
    x = uniform(rng, (g["N"], g["C"], g["H"], g["W"]), dtype)
    w = uniform(rng, (g["K"], 1 if depthwise else g["C"] // g["groups"], g["kh"], g["kw"]), dtype)
    b = uniform(rng, (g["K"],), dtype) if with_bias else None
    conv = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])
    if not depthwise:
        conv["groups"] = g["groups"]
    ref_fwd = (lambda: ref.depthwise_conv2d(x, w, b, **conv)) if depthwise else (lambda: ref.conv2d(x, w, b, **conv))
    if not op.endswith("_backward"):
        def forward():
            y = ref_fwd()
            return (np.maximum(y, 0.0) if activation == "relu" else y,)
        return Case(op, dict(input=x, weight=w, bias=b), dict(conv, activation=activation), ("input",), ("act",),
                    forward, dtype)
    gy = uniform(rng, ref_fwd().shape, dtype)
    ref_bwd = ref.depthwise_conv2d_backward if depthwise else ref.conv2d_backward
    return Case(op, dict(grad_output=gy, input=x, weight=w), conv, ("grad_output", "input"), ("act", "param", "param"),
                lambda: ref_bwd(gy, x, w, **conv), dtype)


@st.composite
def _common(draw):
    return draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from(DTYPES))


@st.composite
def conv2d_case(draw, op="conv2d", sizes=SMALL):
    g = draw(conv_geometry(sizes=sizes))
    seed, dtype = draw(_common())
    return _conv_case(op, g, seed, dtype, draw(st.booleans()), draw(st.sampled_from([None, "relu"])))


@st.composite
def depthwise_case(draw, op="depthwise_conv2d", sizes=SMALL):
    g = draw(conv_geometry(depthwise=True, sizes=sizes))
    seed, dtype = draw(_common())
    return _conv_case(op, g, seed, dtype, draw(st.booleans()), draw(st.sampled_from([None, "relu"])), depthwise=True)


@st.composite
def separable_case(draw, op="separable_conv2d", sizes=SMALL):
    g = draw(conv_geometry(depthwise=True, sizes=sizes))
    seed, dtype = draw(_common())
    rng = np.random.default_rng(seed)
    x = uniform(rng, (g["N"], g["C"], g["H"], g["W"]), dtype)
    dw = uniform(rng, (g["K"], 1, g["kh"], g["kw"]), dtype)
    pw = uniform(rng, (draw(st.integers(1, sizes.channels + 1)), g["K"], 1, 1), dtype)
    conv = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])
    if op == "separable_conv2d":
        b = uniform(rng, (pw.shape[0],), dtype) if draw(st.booleans()) else None
        act = draw(st.sampled_from([None, "relu"]))

        def forward():
            y = ref.separable_conv2d(x, dw, pw, b, **conv)
            return (np.maximum(y, 0.0) if act == "relu" else y,)
        return Case(op, dict(input=x, depthwise_weight=dw, pointwise_weight=pw, bias=b), dict(conv, activation=act),
                    ("input",), ("act",), forward, dtype)
    gy = uniform(rng, ref.separable_conv2d(x, dw, pw, None, **conv).shape, dtype)
    return Case(op, dict(grad_output=gy, input=x, depthwise_weight=dw, pointwise_weight=pw), conv,
                ("grad_output", "input"), ("act", "param", "param", "param"),
                lambda: ref.separable_conv2d_backward(gy, x, dw, pw, **conv), dtype)


@st.composite
def conv_transpose_case(draw, op="conv_transpose2d", sizes=SMALL):
    per_group = st.integers(1, sizes.channels - 1)
    groups, Cg, Kg = draw(small), draw(per_group), draw(per_group)
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, dilation = (draw(small), draw(small)), (draw(small), draw(small))
    H, W = (draw(st.integers(1, sizes.images[0] - 4)) for _ in range(2))
    out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    # padding at most what keeps the output non-empty: (H-1)*S + D*(k-1) + op >= 2P
    pad = tuple(draw(st.integers(0, min(3, ((n - 1) * s + d * (k - 1) + o) // 2)))
                for n, s, d, k, o in zip((H, W), stride, dilation, (kh, kw), out_pad))
    seed, dtype = draw(_common())
    rng = np.random.default_rng(seed)
    C, N = groups * Cg, draw(st.integers(*sizes.batch))
    x = uniform(rng, (N, C, H, W), dtype)
    w = uniform(rng, (C, Kg, kh, kw), dtype)
    conv = dict(stride=_maybe_int(draw, stride), padding=_maybe_int(draw, pad),
                output_padding=_maybe_int(draw, out_pad), groups=groups, dilation=_maybe_int(draw, dilation))
    if op == "conv_transpose2d":
        b = uniform(rng, (groups * Kg,), dtype) if draw(st.booleans()) else None
        return Case(op, dict(input=x, weight=w, bias=b), conv, ("input",), ("act",),
                    lambda: (ref.conv_transpose2d(x, w, b, **conv),), dtype)
    gy = uniform(rng, ref.conv_transpose2d(x, w, None, **conv).shape, dtype)
    return Case(op, dict(grad_output=gy, input=x, weight=w), conv, ("grad_output", "input"),
                ("act", "param", "param"), lambda: ref.conv_transpose2d_backward(gy, x, w, **conv), dtype)


@st.composite
def pool_geometry(draw, kind, sizes=SMALL):
    """kernel, stride (None: the kernel), padding <= k/2, dilation (max only), ceil_mode."""
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(small, small)))
    pad = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "max" else (1, 1)
    H, W = (draw(_image_size(_extent(kk, d), (p, p), sizes)) for kk, d, p in zip(k, dil, pad))
    g = dict(N=draw(st.integers(*sizes.batch)), C=draw(st.integers(1, sizes.channels + 1)), H=H, W=W, kernel_size=_maybe_int(draw, k),
             stride=None if stride is None else _maybe_int(draw, stride), padding=_maybe_int(draw, pad),
             ceil_mode=draw(st.booleans()))
    if kind == "max":
        g["dilation"] = _maybe_int(draw, dil)
    else:
        g["count_include_pad"] = draw(st.booleans())
        g["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 7)))
    return g


def _pool_input(draw, kind, fill, sizes):
    """(pool keyword arguments, rng, dtype, input) of a random pooling call."""
    g = draw(pool_geometry(kind, sizes))
    seed, dtype = draw(_common())
    rng = np.random.default_rng(seed)
    x = fill(rng, (g["N"], g["C"], g["H"], g["W"]), dtype)
    return {k: v for k, v in g.items() if k not in ("N", "C", "H", "W")}, rng, dtype, x


@st.composite
def max_pool_case(draw, op="max_pool2d", sizes=SMALL):
    p, rng, dtype, x = _pool_input(draw, "max", distinct, sizes)
    if op == "max_pool2d":
        return Case(op, dict(input=x), dict(p, return_indices=True), ("input",), ("act", "index"),
                    lambda: ref.max_pool2d(x, **p, return_indices=True), dtype)
    _, idx = ref.max_pool2d(x, **p, return_indices=True)
    gy = uniform(rng, idx.shape, dtype)
    arrays = dict(grad_output=gy, input=x)
    if draw(st.booleans()):  # the indices of the forward pass, or recomputed
        return Case(op, arrays, dict(p, indices=None), ("grad_output", "input"), ("act",),
                    lambda: (ref.max_pool2d_backward(gy, x, **p),), dtype)
    order = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    arrays.update({k: p[k] for k in order}, indices=idx)
    return Case(op, arrays, {}, ("grad_output", "input", "indices"), ("act",),
                lambda: (ref.max_pool2d_backward_from_indices(gy, idx, x.shape),), dtype)


@st.composite
def avg_pool_case(draw, op="avg_pool2d", sizes=SMALL):
    p, rng, dtype, x = _pool_input(draw, "avg", uniform, sizes)
    if op == "avg_pool2d":
        return Case(op, dict(input=x), p, ("input",), ("act",), lambda: (ref.avg_pool2d(x, **p),), dtype)
    gy = uniform(rng, ref.avg_pool2d(x, **p).shape, dtype)
    return Case(op, dict(grad_output=gy, input=x), p, ("grad_output", "input"), ("act",),
                lambda: (ref.avg_pool2d_backward(gy, x.shape, **p),), dtype)


@st.composite
def _plane(draw, dtype_rng_fill, sizes):
    N, C = draw(st.integers(*sizes.batch)), draw(st.integers(1, sizes.channels + 1))
    H, W = draw(_image_size(1, None, sizes)), draw(_image_size(1, None, sizes))
    seed, dtype = draw(_common())
    rng = np.random.default_rng(seed)
    return rng, dtype, dtype_rng_fill(rng, (N, C, H, W), dtype)


@st.composite
def global_case(draw, op, sizes=SMALL):
    kind = "max" if "max" in op else "avg"
    rng, dtype, x = draw(_plane(distinct if kind == "max" else uniform, sizes))
    backward = op.endswith("_backward")
    if kind == "avg":
        if not backward:
            return Case(op, dict(input=x), {}, ("input",), ("act",), lambda: (ref.global_avg_pool2d(x),), dtype)
        gy = uniform(rng, x.shape[:2] + (1, 1), dtype)
        return Case(op, dict(grad_output=gy, input=x), {}, ("grad_output", "input"), ("act",),
                    lambda: (ref.global_avg_pool2d_backward(gy, x.shape),), dtype)
    if not backward:
        return Case(op, dict(input=x), dict(return_indices=True), ("input",), ("act", "index"),
                    lambda: ref.global_max_pool2d(x, return_indices=True), dtype)
    gy = uniform(rng, x.shape[:2] + (1, 1), dtype)
    _, idx = ref.global_max_pool2d(x, return_indices=True)
    idx = idx if draw(st.booleans()) else None
    return Case(op, dict(grad_output=gy, input=x, indices=idx), {}, ("grad_output", "input", "indices"), ("act",),
                lambda: (ref.global_max_pool2d_backward(gy, x, idx),), dtype)


@st.composite
def maxout_case(draw, op="maxout2d", sizes=SMALL):
    k = draw(st.integers(1, 4))
    N, C = draw(st.integers(*sizes.batch)), k * draw(st.integers(1, sizes.channels))
    H, W = draw(_image_size(1, None, sizes)), draw(_image_size(1, None, sizes))
    seed, dtype = draw(_common())
    rng = np.random.default_rng(seed)
    x = distinct(rng, (N, C, H, W), dtype)
    if op == "maxout2d":
        return Case(op, dict(input=x, k=k), {}, ("input",), ("act",), lambda: (ref.maxout2d(x, k),), dtype)
    gy = uniform(rng, (N, C // k, H, W), dtype)
    return Case(op, dict(grad_output=gy, input=x, k=k), {}, ("grad_output", "input"), ("act",),
                lambda: (ref.maxout2d_backward(gy, x, k),), dtype)


def case_strategy(op: str, sizes: Sizes = SMALL):
    """The strategy drawing a valid Case of a public op."""
    base = op.removesuffix("_backward")
    table = {
        "conv2d": conv2d_case, "depthwise_conv2d": depthwise_case, "separable_conv2d": separable_case,
        "conv_transpose2d": conv_transpose_case, "max_pool2d": max_pool_case, "avg_pool2d": avg_pool_case,
        "maxout2d": maxout_case,
    }
    if base in table:
        return table[base](op, sizes)
    return global_case(op, sizes)


# ----------------------------------------------------------------------- memory guard
def under_asan() -> bool:
    return "asan" in os.environ.get("LD_PRELOAD", "")


@contextlib.contextmanager
def memory_cap(extra_bytes: int = 2 << 30):
    """Address space capped at its current size + extra_bytes while hostile calls run.

    A call that asks for more gets MemoryError (malloc returns NULL) instead of pages the
    shared machine does not have. Under AddressSanitizer (which reserves terabytes of
    shadow address space) the cap is ASan's own: run with
    ASAN_OPTIONS=allocator_may_return_null=1:max_allocation_size_mb=4096 (README).
    """
    if under_asan():
        yield
        return
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_bytes + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
