"""Property tests: random valid calls of every public op, with every registered CPU
algorithm, agree with convkit.reference; random invalid calls raise TypeError/ValueError.

The cases come from tests/op_cases.py (one strategy per op). Hypothesis runs the "ci"
profile of tests/conftest.py by default (derandomized, a few dozen examples per test);
`pytest tests/test_properties.py --hypothesis-profile=long` searches much further.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import event, given, strategies as st

import convkit
import op_cases as oc

PAIRS = oc.op_algo_pairs()


def test_every_public_op_has_a_case():
    missing = [op for op in oc.public_ops() if op not in oc.OP_PRIMITIVES]
    assert not missing, f"public ops without a property-test case in tests/op_cases.py: {missing}"


def test_every_cpu_implementation_is_exercised():
    """Each registered CPU row is reached by at least one (op, algo) pair tested below."""
    reached = {(p, algo) for op, algo in PAIRS for p in oc.OP_PRIMITIVES[op]}
    rows = {(r.primitive, r.algo) for r in convkit.implementations("cpu") if r.covers is None}  # see oc.cpu_algos
    assert rows <= reached, f"registered CPU rows no public op reaches: {sorted(rows - reached)}"


@pytest.mark.parametrize("op,algo", PAIRS)
@given(data=st.data())
def test_matches_reference(op, algo, data):
    case = data.draw(oc.case_strategy(op), label="case")
    layout = data.draw(st.sampled_from(oc.LAYOUTS), label="layout")
    contiguous = data.draw(st.booleans(), label="contiguous")
    isa = data.draw(st.sampled_from(oc.isas()), label="isa")
    with oc.isa_cap(isa):
        raw = case.call_raw(layout, algo, contiguous)
    assert all(r.flags.c_contiguous for r in raw if r is not None), f"non-contiguous output of {case.describe()}"
    oc.check_matches(case, case.to_nchw(raw, layout))


# ----------------------------------------------------------------------- invalid calls
# Values that are wrong for an argument of that name whatever the rest of the call.
_BAD_PARAMS = {
    "stride": [0, -1, 1.5, "2", True, (1, 2, 3), (1, 0)],
    "padding": [-1, (1, -1), (1, 2, 3), "full", 0.5, (0, 0, 0, -1)],
    "dilation": [0, -1, 1.0, (1, 0), "1"],
    "groups": [0, -1, 1.5, 10**6, None],
    "output_padding": [-1, 100, 1.5, (0, 100)],
    "kernel_size": [0, -1, 2.5, (2,), None],
    "divisor_override": [0, -3, 1.5],
    "activation": ["tanh", 1],
    "k": [0, -1, 1.5, 10**6, None],
}
_BAD_POOL_PADDING = [100, "same"]  # more than half the kernel; no string paddings
_BAD_CALL = {"layout": ["NCWH", 3, None], "algo": ["nope", 3, None], "device": ["tpu", None]}
_BAD_ARRAYS = ["abc", 3, None, [[1.0]]]
_BAD_DTYPES = [np.float16, np.int32, np.int64, np.complex64, np.bool_, object]
_OPTIONAL = ("bias", "indices")  # None is valid for these


def _is_array(a):
    return isinstance(a, np.ndarray)


@st.composite
def invalid_call(draw, op):
    """A valid case with one thing made wrong; returns (op, positional args, keywords, what)."""
    case = draw(oc.case_strategy(op))
    params = dict(case.params)
    arrays = dict(case.arrays)
    call = dict(layout="NCHW", algo=draw(st.sampled_from(oc.cpu_algos(op) + ["auto"])))
    pool = "pool" in op or "maxout" in op
    choices = [("param", n) for n in list(params) + [n for n, a in arrays.items() if not _is_array(a)]
               if n in _BAD_PARAMS or (n == "padding" and pool)]
    choices += [("call", n) for n in _BAD_CALL]
    float_arrays = [n for n, a in arrays.items() if _is_array(a) and a.dtype.kind == "f"]
    choices += [(kind, n) for n in float_arrays for kind in ("dtype", "ndim", "type")]
    choices += [("shape", n) for n in float_arrays if n not in ("input",)]
    choices += [("empty", n) for n in float_arrays if n in ("input",) and op.endswith("2d")]
    if len(float_arrays) > 1:
        choices.append(("mixed", draw(st.sampled_from(float_arrays))))
    if _is_array(arrays.get("indices")):
        choices += [("indices", "indices")]
    kind, name = draw(st.sampled_from(choices))

    target = params if name in params else arrays
    if kind == "param":
        bad = _BAD_PARAMS.get(name, []) + (_BAD_POOL_PADDING if name == "padding" and pool else [])
        if name == "padding" and not pool and "transpose" in op:
            bad = bad + ["same"]
        target[name] = draw(st.sampled_from(bad))
    elif kind == "call":
        call[name] = draw(st.sampled_from(_BAD_CALL[name]))
    elif kind == "dtype":
        arrays[name] = arrays[name].astype(draw(st.sampled_from(_BAD_DTYPES)))
    elif kind == "mixed":
        a = arrays[name]
        arrays[name] = a.astype(np.float64 if a.dtype == np.float32 else np.float32)
    elif kind == "ndim":
        a = arrays[name]
        arrays[name] = a[None] if draw(st.booleans()) or a.ndim == 1 or a.shape[0] == 0 else a[0]
    elif kind == "type":
        bad = [v for v in _BAD_ARRAYS if not (v is None and name in _OPTIONAL)]
        arrays[name] = draw(st.sampled_from(bad))
    elif kind == "shape":  # one more along an axis the rest of the call pins down
        a = arrays[name]
        axis = {"weight": 0 if "transpose" in op else 1, "depthwise_weight": 1, "pointwise_weight": 1,
                "bias": 0}.get(name, a.ndim - 1)
        grown = list(a.shape)
        grown[axis] += 1
        arrays[name] = np.zeros(grown, a.dtype)
    elif kind == "empty":
        a = arrays[name]
        shape = list(a.shape)
        shape[draw(st.integers(1, 3))] = 0
        arrays[name] = np.zeros(shape, a.dtype)
    elif kind == "indices":
        idx = arrays["indices"].copy()
        what = draw(st.sampled_from(["dtype", "shape"] + (["range"] if idx.size else [])))
        if what == "dtype":
            idx = idx.astype(draw(st.sampled_from([np.int32, np.float64, np.uint64])))
        elif what == "shape":
            idx = np.zeros(idx.shape[:-1] + (idx.shape[-1] + 1,), np.int64)
        else:
            H, W = case.arrays["input"].shape[2:]
            idx.flat[draw(st.integers(0, idx.size - 1))] = draw(st.sampled_from([H * W, H * W + 7, -2, -(2**62)]))
        arrays["indices"] = idx
    bad_case = dataclasses.replace(case, arrays=arrays, params=params)
    return bad_case, call, f"{kind} {name}"


@pytest.mark.parametrize("op", [op for op in oc.public_ops() if op in oc.OP_PRIMITIVES])
@given(data=st.data())
def test_invalid_calls_raise(op, data):
    case, call, what = data.draw(invalid_call(op), label="invalid call")
    event(what)
    args = [a for a in case.arrays.values()]
    with pytest.raises((TypeError, ValueError)) as err:
        getattr(convkit, op)(*args, **case.params, **call)
    assert str(err.value), f"{op}: an empty error message for {what}"


# ------------------------------------------------------------ extreme valid parameters
# Mostly below 2^31 (the C++ bindings refuse larger parameters), where sums and products
# of sizes can still pass 2^32 or 2^62.
_BIG = [2**16 + 1, 2**30, 2**31 - 2, 2**31 - 1]
_HUGE = st.sampled_from([0, 1, 2] + 3 * _BIG + [2**31, 2**32 + 3, 2**61])


def _gather_conv2d(x, w, b, gy, stride, pads, dilation, groups):
    """conv2d forward and backward by explicit index arithmetic on Python ints: exact for any
    padding/stride/dilation, fast only for a handful of output pixels."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    Kg = K // groups
    OH = (H + pads[0] + pads[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    OW = (W + pads[2] + pads[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    x64, w64, gy64 = x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64)
    y = np.zeros((N, K, OH, OW)) + (0.0 if b is None else b.astype(np.float64)[:, None, None])
    gx, gw = np.zeros(x.shape), np.zeros(w.shape)
    for oh in range(OH):
        for ow in range(OW):
            for i in range(kh):
                r = oh * stride[0] - pads[0] + i * dilation[0]
                for j in range(kw):
                    c = ow * stride[1] - pads[2] + j * dilation[1]
                    if not (0 <= r < H and 0 <= c < W):
                        continue
                    for g in range(groups):
                        ks, cs = slice(g * Kg, (g + 1) * Kg), slice(g * Cg, (g + 1) * Cg)
                        y[:, ks, oh, ow] += x64[:, cs, r, c] @ w64[ks, :, i, j].T
                        gx[:, cs, r, c] += gy64[:, ks, oh, ow] @ w64[ks, :, i, j]
                        gw[ks, :, i, j] += gy64[:, ks, oh, ow].T @ x64[:, cs, r, c]
    return y, gx, gw


@st.composite
def extreme_conv(draw):
    """A valid conv2d with huge padding, stride or dilation and a tiny output."""
    groups, Cg, Kg = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    Cg = 1 if groups > 1 and draw(st.booleans()) else Cg  # depthwise (groups == C) half the time
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    pads = [draw(_HUGE) for _ in range(4)]
    dilation = tuple(draw(st.sampled_from([1, 2, 2**20] + _BIG + [2**33])) for _ in range(2))
    stride = []
    for axis in range(2):
        span = size[axis] + pads[2 * axis] + pads[2 * axis + 1] - dilation[axis] * (k[axis] - 1) - 1
        if span < 0:  # pad the far side just enough for the kernel to fit
            pads[2 * axis + 1] -= span
            span = 0
        # at most 4 outputs along the axis, or a huge stride whatever the span
        stride.append(draw(st.sampled_from([min(span // 3 + 1, 2**31 - 1), span // 2 + 1, span + 1, 2**31 - 1, 2**62])))
    pads = tuple(pads)
    return dict(N=draw(st.integers(1, 2)), C=groups * Cg, K=groups * Kg, size=size, k=k, pads=pads,
                stride=tuple(stride), dilation=dilation, groups=groups, dtype=draw(st.sampled_from(oc.DTYPES)),
                layout=draw(st.sampled_from(oc.LAYOUTS)))


@pytest.mark.parametrize("algo", oc.cpu_algos("conv2d_backward"))
@given(cfg=extreme_conv())
def test_extreme_parameters_are_exact_or_memory_error(algo, cfg):
    """Sizes near and past 2^31 (and sums near 2^63) in padding, stride and dilation: the
    kernels compute the few output pixels exactly, or refuse a workspace they cannot have
    with MemoryError (never a crash, never garbage)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (cfg["N"], cfg["C"]) + cfg["size"]).astype(cfg["dtype"])
    w = rng.uniform(-1, 1, (cfg["K"], cfg["C"] // cfg["groups"]) + cfg["k"]).astype(cfg["dtype"])
    b = rng.uniform(-1, 1, cfg["K"]).astype(cfg["dtype"])
    conv = dict(stride=cfg["stride"], padding=cfg["pads"], dilation=cfg["dilation"], groups=cfg["groups"],
                layout=cfg["layout"], algo=algo)
    with oc.memory_cap():
        try:
            y = oc.from_layout(convkit.conv2d(oc.to_layout(x, cfg["layout"]), w, b, **conv), cfg["layout"])
            gy = rng.uniform(-1, 1, y.shape).astype(cfg["dtype"])
            gx, gw, _ = convkit.conv2d_backward(oc.to_layout(gy, cfg["layout"]), oc.to_layout(x, cfg["layout"]), w,
                                                **conv)
            gx = oc.from_layout(gx, cfg["layout"])
        except MemoryError as err:
            event(f"MemoryError: {str(err)[:40]}")
            return
        except ValueError as err:
            # A stated limit: NumPy's size past intp (algo="reference" pads explicitly), the
            # compiled paths' parameters < 2^31, im2col's 32-bit BLAS sizes
            limit = next((m for m in ("array is too big", "< 2^31", "32-bit BLAS") if m in str(err)), None)
            assert limit, err
            event(f"ValueError: {limit}")
            return
    event("computed")
    want_y, want_gx, want_gw = _gather_conv2d(x, w, b, gy, cfg["stride"], cfg["pads"], cfg["dilation"],
                                              cfg["groups"])
    tol = 1e-5 if cfg["dtype"] == np.float32 else 1e-12
    for got, want in ((y, want_y), (gx, want_gx), (gw, want_gw)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=str(cfg))


# ------------------------------------------------- compiled rows given a lying geometry
_HOSTILE_INTS = st.one_of(st.integers(-3, 6), st.sampled_from([2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1]))
_COMPILED_ROWS = [r for r in convkit.implementations("cpu") if r.algo != "reference"]


def _forge(draw, geom, arrays):
    """One or two of: a geometry field set to a hostile value, an array grown or shrunk."""
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            f = draw(st.sampled_from([f.name for f in dataclasses.fields(geom)]))
            old = getattr(geom, f)
            new = tuple(draw(_HOSTILE_INTS) for _ in old) if isinstance(old, tuple) else draw(_HOSTILE_INTS)
            geom = dataclasses.replace(geom, **{f: new})
        else:
            name = draw(st.sampled_from([n for n, a in arrays.items() if a is not None]))
            a = arrays[name]
            shape = list(a.shape)
            axis = draw(st.integers(0, len(shape) - 1))
            shape[axis] = max(0, shape[axis] + draw(st.sampled_from([-1, 1, 5])))
            arrays[name] = np.zeros(shape, a.dtype)
    return geom, arrays


@st.composite
def forged_row_call(draw, row):
    """A registry row's arguments from a valid call, then made inconsistent."""
    dtype = draw(st.sampled_from(oc.DTYPES))
    layout = draw(st.sampled_from(row.layouts))
    rng = np.random.default_rng(0)
    if row.primitive.startswith("conv2d"):
        g = draw(oc.conv_geometry())
        geom = convkit._args.conv_geometry((g["N"], g["C"], g["H"], g["W"]), (g["K"], g["C"] // g["groups"], g["kh"],
                                           g["kw"]), g["stride"], g["padding"], g["dilation"], g["groups"])
        act = lambda c, h, w: oc.to_layout(oc.uniform(rng, (geom.N, c, h, w), dtype), layout)  # noqa: E731
        arrays = dict(x=act(geom.C, geom.H, geom.W), gy=act(geom.K, geom.OH, geom.OW),
                      w=oc.uniform(rng, (geom.K, geom.C // geom.groups, geom.kh, geom.kw), dtype),
                      b=oc.uniform(rng, (geom.K,), dtype) if draw(st.booleans()) else None)
        geom, a = _forge(draw, geom, arrays)
        args = {"conv2d_forward": (a["x"], a["w"], a["b"], geom, draw(st.sampled_from([None, "relu"])), layout),
                "conv2d_grad_input": (a["gy"], a["w"], geom, layout),
                "conv2d_grad_weight": (a["gy"], a["x"], geom, layout)}[row.primitive]
        return args
    if row.primitive.startswith("maxout"):
        k = draw(st.integers(1, 3))
        x = oc.uniform(rng, (2, 3 * k, 3, 4), dtype)
        arrays = dict(x=x, gy=np.zeros((2, 3, 3, 4), dtype))
        k = draw(st.one_of(st.just(k), _HOSTILE_INTS))
        _, a = _forge(draw, convkit._args.ConvGeom(*[0] * 13), arrays) if draw(st.booleans()) else (None, arrays)
        x, gy = oc.to_layout(a["x"], layout), oc.to_layout(a["gy"], layout)
        return (x, k, layout) if row.primitive == "maxout2d" else (gy, x, k, layout)
    kind = "max" if row.primitive.startswith("max") else "avg"
    g = draw(oc.pool_geometry(kind))
    geom = convkit._args.pool_geometry((g["N"], g["C"], g["H"], g["W"]), g["kernel_size"], g["stride"], g["padding"],
                                       g.get("dilation", 1), g["ceil_mode"],
                                       count_include_pad=g.get("count_include_pad", True),
                                       divisor_override=g.get("divisor_override"))
    out = (geom.N, geom.C, geom.OH, geom.OW)
    arrays = dict(x=oc.uniform(rng, (geom.N, geom.C, geom.H, geom.W), dtype), gy=oc.uniform(rng, out, dtype),
                  idx=rng.integers(0, geom.H * geom.W, out).astype(np.int64))
    geom, a = _forge(draw, geom, arrays)
    a = {n: oc.to_layout(v, layout) for n, v in a.items()}
    return {"max_pool2d": (a["x"], geom, layout), "max_pool2d_backward": (a["gy"], a["idx"], geom, layout),
            "avg_pool2d": (a["x"], geom, layout), "avg_pool2d_backward": (a["gy"], geom, layout)}[row.primitive]


@pytest.mark.parametrize("row", _COMPILED_ROWS, ids=lambda r: f"{r.primitive}-{r.algo}")
@given(data=st.data())
def test_compiled_rows_survive_a_lying_geometry(row, data):
    """The registry's contract promises a checked geometry, but the compiled code re-checks
    shapes itself: given arrays that disagree with it (or hostile sizes), a row returns or
    raises TypeError/ValueError/OverflowError/MemoryError; it never reads or writes out of
    bounds (run under AddressSanitizer to see that, README "Checking builds")."""
    args = data.draw(forged_row_call(row), label="args")
    with oc.memory_cap():
        try:
            row.fn(*args)
        except (TypeError, ValueError, OverflowError, MemoryError) as err:
            event(type(err).__name__)
        else:
            event("returned")


# ------------------------------------------------------- what the fuzzing found, pinned
def _f32(*shape):
    return np.ones(shape, np.float32)


_REFUSED = {  # each raised something else, crashed or was accepted by one algorithm only
    "depthwise conv, empty channels (ZeroDivisionError)": lambda algo: convkit.depthwise_conv2d(
        _f32(1, 0, 2, 2), _f32(1, 1, 1, 1), algo=algo),
    "maxout, empty channels (accepted by the reference only)": lambda algo: convkit.maxout2d(
        _f32(1, 0, 2, 2), 1, algo=algo),
    "max-pool backward, index -2 (skipped by direct)": lambda algo: convkit.max_pool2d_backward(
        _f32(1, 1, 1, 1), _f32(1, 1, 1, 2), (1, 2), indices=np.full((1, 1, 1, 1), -2), algo=algo),
    "conv, stride 2^63-1 (im2col: segfault)": lambda algo: convkit.conv2d(
        _f32(2, 3, 16, 6), _f32(3, 3, 1, 4), stride=(3, 2**63 - 1), padding=(0, 0, 3, 4), dilation=(2, 3), algo=algo),
}


def _refusing_algos(what):
    op = "maxout2d" if "maxout" in what else "max_pool2d_backward" if "pool" in what else "conv2d"
    # the reference has no 2^31 limit: it computes the stride-2^63 call exactly
    return [a for a in oc.cpu_algos(op) if not ("2^63" in what and a == "reference")]


@pytest.mark.parametrize("what,algo", [(w, a) for w in _REFUSED for a in _refusing_algos(w)])
def test_fuzzing_finds_refused_cleanly(what, algo):
    with pytest.raises(ValueError):
        _REFUSED[what](algo)


@pytest.mark.parametrize("algo", oc.cpu_algos("conv2d_backward"))
@pytest.mark.parametrize("stride,padding", [((2**31 - 1, 2**31 - 1), 2**30), ((4096, 4096), 0), ((70000, 70000), 70000)],
                         ids=["stride-2^31", "stride-4096", "padding-70000"])
@pytest.mark.parametrize("groups", [1, 2], ids=["dense", "depthwise"])
def test_fuzzing_finds_strides_and_paddings_dwarfing_the_image(algo, stride, padding, groups):
    """Found crashing (SIGFPE), hanging (a loop over 2^62 phases) or taking seconds and
    gigabytes: now exact, at the cost of the taps."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 3, 3)).astype(np.float32)
    w = np.random.default_rng(1).uniform(-1, 1, (2, 2 // groups, 1, 1)).astype(np.float32)
    conv = dict(stride=stride, padding=padding, groups=groups)
    try:
        y = convkit.conv2d(x, w, **conv, algo=algo)
        gy = np.ones_like(y)
        gx, gw, _ = convkit.conv2d_backward(gy, x, w, **conv, algo=algo)
    except ValueError as err:  # im2col's 32-bit BLAS sizes, algo="reference"'s explicit padding
        assert "32-bit BLAS" in str(err) or "too big" in str(err), err
        return
    except MemoryError:
        assert algo == "reference"
        return
    pads = (padding,) * 4
    want = _gather_conv2d(x, w, None, gy, stride, pads, (1, 1), groups)
    for got, ref in zip((y, gx, gw), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
