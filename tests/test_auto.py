"""algo="auto": the rules pick a registered algorithm and say why; autotune measures
once per shape, keeps the fastest, and (optionally) persists it."""
from __future__ import annotations

import json

import numpy as np
import pytest

import convkit
from convkit import _args, _auto, _registry
from convkit import reference as ref
from convkit._impl_winograd import covers as winograd_covers
from op_cases import num_threads

CONV_PRIMITIVES = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")

# Each has at least 65536 multiply-adds, past the rule 'tiny call' but for "tiny".
GEOMS = {
    "tiny": ((1, 1, 8, 8), (1, 1, 3, 3), dict(stride=1, padding=0, dilation=1, groups=1)),
    "dense3x3": ((2, 8, 9, 9), (8, 8, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1)),
    "pointwise": ((16, 16, 6, 6), (12, 16, 1, 1), dict(stride=1, padding=0, dilation=1, groups=1)),
    "depthwise": ((64, 6, 9, 9), (6, 1, 3, 3), dict(stride=2, padding=1, dilation=1, groups=6)),
    "lenet": ((8, 1, 12, 12), (6, 1, 5, 5), dict(stride=1, padding=0, dilation=1, groups=1)),
    "dilated": ((1, 8, 12, 12), (32, 8, 3, 3), dict(stride=1, padding=4, dilation=4, groups=1)),
    "small_image": ((1, 128, 9, 9), (16, 128, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1)),
    "patchify": ((2, 3, 32, 32), (16, 3, 4, 4), dict(stride=4, padding=0, dilation=1, groups=1)),
}


@pytest.fixture(autouse=True)
def clean_auto_state(monkeypatch, tmp_path):
    """Rules mode, an empty cache and a private cache directory for every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_auto, "_cache", {})
    monkeypatch.setattr(_auto, "_measured", {})
    convkit.autotune(False)
    yield
    convkit.autotune(False)


def geom_of(name):
    x_shape, w_shape, kw = GEOMS[name]
    return _args.conv_geometry(x_shape, w_shape, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])


@pytest.fixture
def count_measurements(monkeypatch):
    calls = []
    real = _auto._measure

    def counting(primitive, geom, dtype, layout, candidates):
        calls.append((primitive, geom))
        return real(primitive, geom, dtype, layout, candidates)

    monkeypatch.setattr(_auto, "_measure", counting)
    return calls


# ----------------------------------------------------------------------------- rules
@pytest.fixture
def one_thread():
    """The rules' table is written for one thread (see the rule 'several threads')."""
    before = convkit.get_num_threads()
    convkit.set_num_threads(1)
    yield
    convkit.set_num_threads(before)


@pytest.mark.parametrize("name", GEOMS)
@pytest.mark.parametrize("primitive", CONV_PRIMITIVES)
def test_rules_pick_a_registered_algorithm_with_a_reason(primitive, name):
    candidates = _registry.algos(primitive)
    choice = _auto.choose(primitive, geom_of(name), "cpu", candidates, np.float32, "NCHW")
    assert choice.algo in candidates and choice.reason


@pytest.mark.parametrize("primitive, name, dtype, algo, rule", [
    ("conv2d_forward", "dense3x3", np.float64, "im2col", "float64"),
    ("conv2d_grad_input", "tiny", np.float32, "direct", "tiny call"),
    ("conv2d_grad_weight", "tiny", np.float32, "direct", "tiny call"),
    ("conv2d_grad_input", "depthwise", np.float32, "direct", "depthwise"),
    ("conv2d_grad_weight", "depthwise", np.float32, "direct", "depthwise"),
    ("conv2d_forward", "dilated", np.float32, "direct", "mostly padding"),
    ("conv2d_grad_weight", "dilated", np.float32, "direct", "mostly padding"),
    ("conv2d_grad_input", "small_image", np.float32, "im2col", "few pixels per channel"),
    ("conv2d_forward", "small_image", np.float32, "direct", "dense"),
    ("conv2d_grad_weight", "small_image", np.float32, "direct", "dense"),
    ("conv2d_grad_weight", "lenet", np.float32, "im2col", "narrow grad-weight"),
    ("conv2d_grad_input", "lenet", np.float32, "im2col", "one input channel"),
    ("conv2d_forward", "lenet", np.float32, "direct", "dense"),
    ("conv2d_grad_weight", "pointwise", np.float32, "im2col", "narrow grad-weight"),
    ("conv2d_grad_input", "pointwise", np.float32, "direct", "dense"),
    ("conv2d_forward", "dense3x3", np.float32, "direct", "dense"),
    ("conv2d_grad_input", "patchify", np.float32, "im2col", "large stride into few channels"),
    ("conv2d_forward", "patchify", np.float32, "direct", "dense"),
])
def test_rules_follow_the_table(primitive, name, dtype, algo, rule, one_thread):
    choice = _auto.choose(primitive, geom_of(name), "cpu", ["reference", "direct", "im2col"], dtype, "NCHW")
    assert (choice.algo, choice.reason.split("'")[1]) == (algo, rule)


# (input, weight, stride/padding/dilation/groups, whether the rule 'winograd' takes its
# forward and grad-input, and its grad-weight: only where the forward's conditions hold,
# with >= 3x fewer multiplies and more than a few tiles)
WINOGRAD_GEOMS = {
    "resnet_3x3_256": ((1, 256, 14, 14), (256, 256, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1), True),
    "dilated_d2": ((1, 64, 33, 33), (64, 64, 3, 3), dict(stride=1, padding=2, dilation=2, groups=1), True),
    "one_tile_32": ((1, 32, 4, 4), (32, 32, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1), (True, False)),
    "one_tile_256": ((1, 256, 4, 4), (256, 256, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1), False),
    "few_tiles_512": ((1, 512, 7, 7), (512, 512, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1), False),
    "aspp": ((1, 16, 33, 33), (16, 16, 3, 3), dict(stride=1, padding=12, dilation=12, groups=1), False),
    "padding_only_tiles": ((16, 8, 1, 1), (8, 8, 3, 3), dict(stride=1, padding=4, dilation=1, groups=1), False),
    "stride_2": ((1, 64, 56, 56), (64, 64, 3, 3), dict(stride=2, padding=1, dilation=1, groups=1), False),
    # stride phases (measured in _auto's comment): 3.4x and 1.8x fewer multiplies win on
    # 48 and 256 phase channels; 3 channels padded to a vector of 16 lose even at 4x fewer,
    # and 1.8x fewer on 48 phase channels does not pay for the transforms.
    "alexnet_conv1": ((1, 3, 227, 227), (96, 3, 11, 11), dict(stride=4, padding=0, dilation=1, groups=1), True),
    "dcgan_4x4_s2": ((8, 64, 32, 32), (128, 64, 4, 4), dict(stride=2, padding=1, dilation=1, groups=1),
                     (True, False)),
    "three_channels": ((1, 3, 224, 224), (64, 3, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1), False),
    "patch_8x8_s4": ((1, 3, 224, 224), (64, 3, 8, 8), dict(stride=4, padding=2, dilation=1, groups=1), False),
}


@pytest.mark.parametrize("name", WINOGRAD_GEOMS)
@pytest.mark.parametrize("primitive", CONV_PRIMITIVES)
def test_winograd_where_it_does_enough_fewer_multiplies_on_enough_tiles(primitive, name, one_thread):
    x_shape, w_shape, kw, wins = WINOGRAD_GEOMS[name]
    wins, gw_wins = wins if isinstance(wins, tuple) else (wins, wins)
    g = _args.conv_geometry(x_shape, w_shape, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    assert winograd_covers(g, np.float32) is None  # the rule only ever sees covered calls
    choice = _auto.choose(primitive, g, "cpu", ["reference", "direct", "im2col", "winograd"], np.float32, "NCHW")
    assert (choice.algo == "winograd") == (gw_wins if primitive == "conv2d_grad_weight" else wins), choice.reason
    if choice.algo == "winograd":
        assert "'winograd'" in choice.reason


@pytest.mark.parametrize("name", ["small_image", "lenet", "pointwise"])
@pytest.mark.parametrize("primitive", CONV_PRIMITIVES)
def test_float32_stays_off_im2col_on_several_threads(primitive, name):
    """The rules that pick im2col at one thread give way to the direct engine at two, and
    set_num_threads makes a remembered choice answer for the new count."""
    before = convkit.get_num_threads()
    try:
        convkit.set_num_threads(2)
        choice = _auto.choose(primitive, geom_of(name), "cpu", ["reference", "direct", "im2col"], np.float32, "NCHW")
        assert choice.algo == "direct" and "several threads" in choice.reason
        f64 = _auto.choose(primitive, geom_of(name), "cpu", ["reference", "direct", "im2col"], np.float64, "NCHW")
        assert f64.algo == "im2col"
    finally:
        convkit.set_num_threads(before)


def test_a_rule_whose_algorithm_is_missing_is_skipped():
    g = geom_of("dense3x3")
    assert _auto.choose("conv2d_forward", g, "cpu", ["reference", "im2col"], np.float32).algo == "im2col"
    assert _auto.choose("conv2d_forward", g, "cpu", ["reference", "direct"], np.float64).algo == "direct"
    assert _auto.choose("conv2d_forward", g, "cpu", ["reference"]).algo == "reference"


@pytest.mark.parametrize("name", GEOMS)
def test_auto_results_match_the_reference(name):
    x_shape, w_shape, kw = GEOMS[name]
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    y = convkit.conv2d(x, w, **kw)
    np.testing.assert_allclose(y, ref.conv2d(x, w, None, **kw), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- explain
def test_explain_names_the_algorithm_and_the_reason():
    e = convkit.explain("conv2d_backward", (1, 8, 9, 9), (8, 8, 3, 3), padding=1)
    assert [p for p, _ in e.steps] == ["conv2d_grad_input", "conv2d_grad_weight"]
    for primitive, choice in e.steps:
        assert choice.algo in _registry.algos(primitive)
        assert f"{primitive} -> {choice.algo}: {choice.reason}" in str(e)
    assert "rules" in str(e)


def test_explain_ops_and_layouts():
    # conv_transpose2d's forward is conv2d's grad-input; depthwise sets groups = C itself
    assert [p for p, _ in convkit.explain("conv_transpose2d", (1, 8, 5, 5), (8, 4, 4, 4), stride=2).steps] == \
        ["conv2d_grad_input"]
    dw = convkit.explain("depthwise_conv2d", (1, 9, 9, 6), (6, 1, 3, 3), padding=1, layout="NHWC")
    geom = _args.conv_geometry((1, 6, 9, 9), (6, 1, 3, 3), 1, 1, 1, 6)
    assert dw.steps[0][1] == _auto.choose("conv2d_forward", geom, "cpu", _registry.algos("conv2d_forward"))
    with pytest.raises(ValueError, match="op must be"):
        convkit.explain("conv3d", (1, 8, 5, 5), (8, 8, 3, 3))
    with pytest.raises(ValueError, match="groups"):
        convkit.explain("conv2d", (1, 8, 5, 5), (8, 8, 3, 3), groups=3)


# -------------------------------------------------------------------------- autotune
def test_autotune_measures_once_per_shape_and_caches(count_measurements):
    convkit.autotune(True)
    x_shape, w_shape, kw = GEOMS["dense3x3"]
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    y1 = convkit.conv2d(x, w, **kw)
    assert len(count_measurements) == 1
    y2 = convkit.conv2d(x, w, **kw)
    assert len(count_measurements) == 1  # cached: no second measurement
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, ref.conv2d(x, w, None, **kw), rtol=1e-4, atol=1e-4 * np.abs(y1).max())
    (entry,) = _auto._measured.values()
    assert entry["algo"] in _registry.algos("conv2d_forward") and entry["algo"] != "reference"
    assert set(entry["seconds"]) == set(_registry.algos("conv2d_forward")) - {"reference"}
    convkit.conv2d(x.astype(np.float64), w.astype(np.float64), **kw)  # another dtype: another key
    convkit.conv2d(x[:1], w, **kw)  # another shape
    assert len(count_measurements) == 3
    e = convkit.explain("conv2d", x_shape, w_shape, **kw)
    assert len(count_measurements) == 3 and "autotune: measured fastest" in str(e)


@pytest.mark.parametrize("fastest", ["direct", "im2col"])
def test_autotune_keeps_the_fastest(monkeypatch, fastest):
    candidates = [a for a in _registry.algos("conv2d_forward") if a != "reference"]
    if fastest not in candidates or len(candidates) < 2:
        pytest.skip(f"needs {fastest} and another compiled algorithm")
    fake = {a: (0.001 if a == fastest else 0.002) for a in candidates}
    monkeypatch.setattr(_auto, "_measure", lambda *args: dict(fake))
    convkit.autotune(True)
    assert _auto.choose("conv2d_forward", geom_of("lenet"), "cpu", _registry.algos("conv2d_forward"),
                        np.float32, "NCHW").algo == fastest


def fake_runner(monkeypatch, seconds: dict):
    """_runner replaced: each algo's call busies the CPU for seconds[algo]; returns the call counts."""
    import time

    calls = dict.fromkeys(seconds, 0)

    def runner(primitive, geom, dtype, layout):
        def run(algo):
            calls[algo] += 1
            end = time.thread_time() + seconds[algo]
            while time.thread_time() < end:
                pass
        return run

    monkeypatch.setattr(_auto, "_runner", runner)
    monkeypatch.setattr(_auto, "_BUDGET", 0.0)  # the fewest rounds: _ROUNDS each
    return calls


@pytest.mark.parametrize("threads, clock, statistic", [(1, "thread_time", "median"), (2, "perf_counter", "min")])
def test_autotune_times_cpu_at_one_thread_and_the_wall_clock_above(threads, clock, statistic):
    with num_threads(threads):
        assert tuple(f.__name__ for f in _auto._clock()) == (clock, statistic)


def test_autotune_retimes_the_two_fastest_when_they_are_close(monkeypatch):
    calls = fake_runner(monkeypatch, {"a": 0.002, "b": 0.0021, "slow": 0.006})
    with num_threads(1):
        seconds = _auto._measure("conv2d_forward", geom_of("lenet"), np.float32, "NCHW", ["a", "b", "slow"])
    # a warm-up call each, _ROUNDS interleaved rounds, then _ROUNDS more of the close pair
    assert calls == {"a": 1 + 2 * _auto._ROUNDS, "b": 1 + 2 * _auto._ROUNDS, "slow": 1 + _auto._ROUNDS}
    assert min(seconds, key=seconds.get) == "a" and seconds["slow"] >= 0.006


def test_autotune_does_not_retime_candidates_far_apart(monkeypatch):
    calls = fake_runner(monkeypatch, {"a": 0.001, "b": 0.003})
    with num_threads(1):
        _auto._measure("conv2d_forward", geom_of("lenet"), np.float32, "NCHW", ["a", "b"])
    assert calls == {"a": 1 + _auto._ROUNDS, "b": 1 + _auto._ROUNDS}


def test_autotune_persists_to_the_user_cache(monkeypatch, tmp_path, count_measurements):
    convkit.autotune(True, persist=True)
    g = geom_of("pointwise")
    candidates = _registry.covering("conv2d_grad_weight", "cpu", g, np.float64)
    first = _auto.choose("conv2d_grad_weight", g, "cpu", candidates, np.float64, "NHWC")
    path = tmp_path / "convkit" / "autotune.json"
    data = json.loads(path.read_text())
    assert data["convkit"] == convkit.__version__
    (entry,) = data["entries"].values()
    assert entry["algo"] == first.algo
    # a new process (here: emptied in-process caches) starts measured
    monkeypatch.setattr(_auto, "_cache", {})
    monkeypatch.setattr(_auto, "_measured", {})
    convkit.autotune(True, persist=True)
    again = _auto.choose("conv2d_grad_weight", g, "cpu", candidates, np.float64, "NHWC")
    assert again.algo == first.algo and len(count_measurements) == 1
    # a damaged file is ignored, not an error
    path.write_text('{"convkit": "%s", "entries": {"x": 1, "y": {"algo": 2}}}' % convkit.__version__)
    assert _auto._load() == {}
    path.write_text("not json")
    assert _auto._load() == {}
    # without persist nothing is written
    path.unlink()
    convkit.autotune(True)
    _auto.choose("conv2d_grad_input", g, "cpu", _registry.covering("conv2d_grad_input", "cpu", g, np.float64),
                 np.float64, "NHWC")
    assert not path.exists()


def test_autotune_switches(monkeypatch):
    for raw, mode in (("1", (True, False)), ("persist", (True, True)), ("0", (False, False)), ("", (False, False))):
        monkeypatch.setenv("CONVKIT_AUTOTUNE", raw)
        assert _auto._env_mode() == mode
    monkeypatch.setenv("CONVKIT_AUTOTUNE", "sometimes")
    with pytest.raises(ValueError, match="CONVKIT_AUTOTUNE"):
        _auto._env_mode()
    with pytest.raises(TypeError):
        convkit.autotune("yes")
