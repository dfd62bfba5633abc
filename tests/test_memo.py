"""The per-call memos never let a call skip a check or a choice it would otherwise make.

convkit trims its per-call cost by remembering what a repeated call already passed: the
checked geometry per argument tuple (_args.conv_geometry), what algo="auto" chose per
shape (_registry.lookup), and, in convkit.torch, that an eager call needs no dispatch.
"""
import numpy as np
import pytest

import convkit
from convkit import _args, _auto, _registry

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
