"""The per-call memos never let a call skip a check or a choice it would otherwise make.

convkit trims its per-call cost by remembering what a repeated call already passed: the
checked geometry per argument tuple (_args.conv_geometry), what algo="auto" chose per
shape and thread count (_registry.lookup), each op call's whole plan per argument types,
shapes, dtypes and values (_registry.call_plans), and, in convkit.torch, that an eager
call needs no dispatch.
"""
import numpy as np
import pytest
from op_cases import num_threads

import convkit
from convkit import _args, _auto, _registry, reference

X = np.ones((1, 2, 6, 6), np.float32)
W = np.ones((3, 2, 3, 3), np.float32)


@pytest.mark.parametrize("kw", [dict(stride=(1, 1)), dict(stride=[2, 1]), dict(padding=(1, 1, 0, 2)),
                                dict(padding=[1, 0]), dict(dilation=(1, 2)), dict(padding="same")])
def test_tuple_and_list_arguments_are_memoised(kw):
    args = {**dict(stride=1, padding=0, dilation=1, groups=1), **kw}
    first = _args.conv_geometry(X.shape, W.shape, *args.values())
    assert _args.conv_geometry(X.shape, W.shape, *args.values()) is first


@pytest.mark.parametrize("name, good, bad, error", [
    ("stride", (1, 1), (1, True), TypeError),
    ("stride", (1, 1), (1, 1.0), TypeError),
    ("padding", (0, 0), [0, False], TypeError),
    ("padding", (1, 1, 1, 1), (1, 1, 1, -1), ValueError),
    ("dilation", 1, True, TypeError),
    ("groups", 1, True, TypeError),
])
def test_a_memoised_call_does_not_let_an_equal_looking_bad_argument_through(name, good, bad, error):
    convkit.conv2d(X, W, **{name: good})
    convkit.conv2d(X, W, **{name: good})
    with pytest.raises(error, match=name):
        convkit.conv2d(X, W, **{name: bad})


def test_numpy_ints_are_still_accepted_after_a_memoised_call():
    want = convkit.conv2d(X, W, stride=(2, 1))
    np.testing.assert_array_equal(convkit.conv2d(X, W, stride=(np.int64(2), np.int32(1))), want)


def test_auto_choice_memo_gives_way_to_autotune_and_new_rows(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_auto, "_cache", {})
    monkeypatch.setattr(_auto, "_measured", {})
    geom = _args.conv_geometry(X.shape, W.shape, 1, 0, 1, 1)
    ruled = _registry.lookup("conv2d_forward", "auto", "cpu", geom, X.dtype, "NCHW")
    assert _registry.lookup("conv2d_forward", "auto", "cpu", geom, X.dtype, "NCHW") is ruled
    measured = []
    monkeypatch.setattr(_auto, "_measure", lambda p, g, dt, lay, cands: measured.append(p) or dict.fromkeys(cands, 1.0))
    try:
        convkit.autotune(True)
        _registry.lookup("conv2d_forward", "auto", "cpu", geom, X.dtype, "NCHW")
        assert measured == ["conv2d_forward"]
    finally:
        convkit.autotune(False)
    # a new registration is seen by the next call: the memo is cleared with the table's caches
    monkeypatch.setattr(_registry, "_table", dict(_registry._table))
    monkeypatch.setattr(_registry, "_auto_algos", {})
    _registry.lookup("conv2d_forward", "auto", "cpu", geom, X.dtype, "NCHW")
    _registry.register("conv2d_forward", "memo_test")(lambda *a: None)
    assert not _registry._auto_algos


def _plan_key(x, w, **kw):
    """conv2d's key in call_plans (built inline by conv2d for plain arguments, the same as
    the general _plan_key's), or None when plans do not serve the call."""
    args = {**dict(bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, layout="NCHW",
                   algo="auto", device="cpu"), **kw}
    return convkit.functional._plan_key("conv2d", (x, w, args.pop("bias")), tuple(args.values()))


def test_a_repeated_conv2d_call_runs_its_plan_and_gives_the_same_result():
    x, w = np.random.default_rng(0).standard_normal((2, 1, 2, 6, 6)).astype(np.float32), W
    first = convkit.conv2d(x[0], w, padding=1)
    assert _plan_key(x[0], w, padding=1) in _registry.call_plans
    np.testing.assert_array_equal(convkit.conv2d(x[0], w, padding=1), first)
    # same shapes, other values: the plan computes, it does not remember results
    np.testing.assert_allclose(convkit.conv2d(x[1], w, padding=1), reference.conv2d(x[1], w, padding=1),
                               rtol=1e-4, atol=1e-4 * 20)


def test_a_planned_call_still_reads_a_non_contiguous_input_right():
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 2)).astype(np.float32)
    view = x.transpose(0, 3, 1, 2)  # NCHW shape, not C-contiguous
    convkit.conv2d(np.ascontiguousarray(view), W)  # makes the plan for this shape and dtype
    assert _plan_key(view, W) in _registry.call_plans
    np.testing.assert_allclose(convkit.conv2d(view, W), reference.conv2d(view, W), rtol=1e-4, atol=1e-3)


def test_a_planned_call_with_other_dtypes_or_array_types_is_checked_again():
    convkit.conv2d(X, W)
    with pytest.raises(TypeError, match="dtypes must match"):
        convkit.conv2d(X.astype(np.float64), W)
    with pytest.raises(ValueError, match="bias"):
        convkit.conv2d(X, W, np.ones(2, np.float32))
    assert _plan_key(X.tolist(), W) is None  # not NumPy: the checked path converts it
    np.testing.assert_array_equal(convkit.conv2d(memoryview(X), W), convkit.conv2d(X, W))


def test_arrays_the_checks_convert_get_no_plan():
    """Big-endian data (read from a file) is converted to native order by the checks: a
    plan would skip that and hand the kernel the original, so none is kept."""
    x, w = X.astype(">f4"), W.astype(">f4")
    want = convkit.conv2d(X, W)
    for _ in range(2):
        np.testing.assert_array_equal(convkit.conv2d(x, w), want)
    assert _plan_key(x, w) not in _registry.call_plans


def test_a_plan_keeps_the_checked_layout_name():
    x = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    want = convkit.conv2d(x, W, layout="NHWC")
    convkit.conv2d(x, W, layout="nhwc")
    np.testing.assert_array_equal(convkit.conv2d(x, W, layout="nhwc"), want)


def test_the_auto_choice_is_memoised_per_thread_count():
    """The rules pick differently at one thread and at two (rule 'several threads'): the
    memos key on the count, so neither answers for the other, without being cleared."""
    if "im2col" not in _registry.algos("conv2d_grad_input"):
        pytest.skip("im2col is not built")
    geom = _args.conv_geometry((1, 128, 5, 5), (64, 128, 1, 1), 1, 0, 1, 1)  # 'few pixels per channel' at one thread
    chosen = {}
    for threads in (1, 2, 1, 2):
        with num_threads(threads):
            chosen.setdefault(threads, set()).add(
                _registry.lookup("conv2d_grad_input", "auto", "cpu", geom, np.dtype(np.float32), "NCHW").algo)
    assert chosen == {1: {"im2col"}, 2: {"direct"}}
    x, w = np.ones((1, 128, 5, 5), np.float32), np.ones((64, 128, 1, 1), np.float32)
    for threads in (1, 2):
        with num_threads(threads):
            convkit.conv2d(x, w)
            assert _plan_key(x, w)[1] == threads and _plan_key(x, w) in _registry.call_plans


def test_a_new_registration_or_autotune_forgets_the_plans(monkeypatch):
    monkeypatch.setattr(_registry, "_table", dict(_registry._table))
    monkeypatch.setattr(_registry, "_algos_cache", {})
    convkit.conv2d(X, W)
    assert _registry.call_plans
    _registry.register("conv2d_forward", "memo_test")(lambda *a: None)
    assert not _registry.call_plans
    convkit.conv2d(X, W)
    try:
        convkit.autotune(True)
        assert not _registry.call_plans
        monkeypatch.setattr(_auto, "_measure", lambda p, g, dt, lay, cands: dict.fromkeys(cands, 1.0))
        convkit.conv2d(X, W)  # measures, then keeps the measured choice's plan
        (plan,) = _registry.call_plans.values()
        geom = _args.conv_geometry(X.shape, W.shape, 1, 0, 1, 1)
        assert plan.impls == (_registry._table[("conv2d_forward", _auto.choose(
            "conv2d_forward", geom, "cpu", _registry.covering("conv2d_forward", "cpu", geom, X.dtype),
            X.dtype, "NCHW").algo, "cpu")],)
        isa = convkit.get_isa()
        convkit.set_isa(isa)  # autotune's choices key on the ISA: the plans go
        assert not _registry.call_plans
    finally:
        convkit.autotune(False)  # forgets what was chosen with the test's row


# ------------------------------------------------------------------------ convkit.torch
def test_eager_calls_skip_the_dispatcher_only_when_nothing_needs_it():
    torch = pytest.importorskip("torch")
    import convkit.torch as ct
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w = torch.ones(1, 2, 6, 6), torch.nn.Parameter(torch.ones(3, 2, 3, 3))
    assert ct._eager_or(ct._conv2d, x, w, None) is ct._conv2d  # w records a gradient
    with torch.no_grad():
        assert ct._eager_or(ct._conv2d, x, w, None) is not ct._conv2d
        with torch.profiler.profile() as prof:
            ct.conv2d(x, w)
        assert "convkit::conv2d" in {e.name for e in prof.events()}
        with FakeTensorMode() as mode:
            fake_x, fake_w = mode.from_tensor(x), mode.from_tensor(w)
            assert ct._eager_or(ct._conv2d, fake_x, fake_w, None) is ct._conv2d
            assert ct.conv2d(fake_x, fake_w).shape == (1, 3, 4, 4)
    w.requires_grad_(False)
    assert ct._eager_or(ct._conv2d, x, w, None) is not ct._conv2d
    assert ct._eager_or(ct._conv2d, x.to("meta"), w, None) is ct._conv2d
    torch.testing.assert_close(ct.conv2d(x, w), torch.nn.functional.conv2d(x, w))


# ------------------------------------------------------------------ every op's plans
def _op_calls(rng):
    """(op name, args, kwargs) of a small call of each public op that keeps a plan."""
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x, w, b, gy = f32(2, 3, 7, 6), f32(4, 3, 3, 3), f32(4), f32(2, 4, 5, 4)
    xt, wt, gyt = f32(2, 4, 5, 4), f32(4, 3, 3, 3), f32(2, 3, 10, 8)  # conv_transpose2d: 4 -> 3, stride 2
    dw, gdw = f32(6, 1, 3, 3), f32(2, 6, 7, 6)
    p = f32(2, 3, 8, 8)
    _, idx = convkit.max_pool2d(p, 2, return_indices=True)
    return [
        ("conv2d", (x, w, b), dict(stride=(1, 1), padding=0, activation="relu")),
        ("conv2d_backward", (gy, x, w), dict(need_bias=False)),
        ("conv2d_backward", (gy, x, w), dict(need_input=False, need_weight=True, need_bias=True)),
        ("conv_transpose2d", (xt, wt, f32(3)), dict(stride=2, padding=1, output_padding=1)),
        ("conv_transpose2d_backward", (gyt, xt, wt), dict(stride=2, padding=1, output_padding=1)),
        ("depthwise_conv2d", (x, dw), dict(padding=1)),
        ("depthwise_conv2d_backward", (gdw, x, dw), dict(padding=1)),
        ("max_pool2d", (p, 2), dict(return_indices=True)),
        ("max_pool2d", (p, 3), dict(stride=2, padding=1)),
        ("max_pool2d_backward", (f32(2, 3, 4, 4), p, 2), dict()),
        ("max_pool2d_backward", (f32(2, 3, 4, 4), p, 2), dict(indices=idx)),
        ("avg_pool2d", (p, 2), dict(ceil_mode=True)),
        ("avg_pool2d_backward", (f32(2, 3, 4, 4), p, 2), dict()),
        ("maxout2d", (f32(2, 6, 4, 4), 3), dict()),
        ("maxout2d_backward", (f32(2, 2, 4, 4), f32(2, 6, 4, 4), 3), dict()),
    ]


def _same(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", range(len(_op_calls(np.random.default_rng(0)))))
def test_every_op_keeps_a_plan_that_gives_the_checked_result(case):
    """The first call is checked and keeps its plan; the second takes the plan and gives
    the same result as a checked call on new arrays of the same shapes; so do
    non-contiguous inputs."""
    name, args, kwargs = _op_calls(np.random.default_rng(case))[case]
    op = getattr(convkit, name)
    _registry.call_plans.clear()
    op(*args, **kwargs)
    assert [k[0] for k in _registry.call_plans] == [name]
    new = tuple(a * 2 if isinstance(a, np.ndarray) and a.dtype == np.float32 else a for a in args)
    planned = op(*new, **kwargs)
    _registry.call_plans.clear()
    _same(planned, op(*new, **kwargs))  # checked again, no plan
    strided = tuple(np.asfortranarray(a) if isinstance(a, np.ndarray) else a for a in new)
    through_plan = op(*strided, **kwargs)  # on arrays it must make contiguous
    _registry.call_plans.clear()
    _same(through_plan, op(*strided, **kwargs))


def test_plans_key_on_shapes_parameters_flags_and_threads():
    x, w, gy = np.ones((1, 2, 6, 6), np.float32), np.ones((3, 2, 3, 3), np.float32), np.ones((1, 3, 4, 4), np.float32)
    _registry.call_plans.clear()
    convkit.conv2d_backward(gy, x, w)
    convkit.conv2d_backward(gy, x, w, need_input=False)
    convkit.conv2d_backward(gy[:, :, :3], x[:, :, :5], w)
    with num_threads(1):
        convkit.conv2d_backward(gy, x, w)
    assert len(_registry.call_plans) == 4
    # a bool equals an int but must still meet its check: never taken for the int's plan
    convkit.max_pool2d(x, 2, padding=1)
    with pytest.raises(TypeError, match="padding"):
        convkit.max_pool2d(x, 2, padding=True)


def test_backward_arrays_the_checks_convert_get_no_plan():
    x, w, gy = np.ones((1, 2, 6, 6), ">f4"), np.ones((3, 2, 3, 3), np.float32), np.ones((1, 3, 4, 4), np.float32)
    want = convkit.conv2d_backward(gy, x.astype(np.float32), w)
    _registry.call_plans.clear()
    for _ in range(2):
        _same(convkit.conv2d_backward(gy, x, w), want)
    assert not _registry.call_plans
