"""`python -m convkit bench` and `check` end to end, in-process, on a tiny suite.

No speed is asserted: these check that every layer and implementation gets its row, the
outputs parse, a wrong result is reported as a failure, and a bad suite is a clear error.
"""
import importlib.util
import io
import json
import sys

import numpy as np
import pytest

import convkit
from convkit import _registry
from convkit.__main__ import main
from convkit.bench import ops, runner, suite

TINY = {"layers": [
    {"name": "tiny_conv", "op": "conv2d", "N": 2, "C": 3, "H": 9, "W": 7, "K": 5, "kernel": [3, 2],
     "stride": [2, 1], "padding": [1, 0], "dilation": 1, "groups": 1},
    {"name": "tiny_depthwise", "op": "conv2d", "N": 1, "C": 4, "H": 6, "W": 6, "K": 4, "kernel": [3, 3],
     "padding": 2, "dilation": 2, "groups": 4},
    {"name": "tiny_convT", "op": "conv_transpose2d", "N": 1, "C": 4, "H": 5, "W": 5, "K": 6, "kernel": [3, 3],
     "stride": 2, "padding": 1, "output_padding": 1, "groups": 2},
    {"name": "tiny_maxpool", "op": "max_pool2d", "N": 1, "C": 2, "H": 7, "W": 7, "kernel": [3, 3], "stride": 2,
     "padding": 1},
    {"name": "tiny_avgpool", "op": "avg_pool2d", "N": 1, "C": 2, "H": 6, "W": 5, "kernel": 2, "ceil_mode": True},
    {"name": "tiny_gap", "op": "global_avg_pool2d", "N": 2, "C": 3, "H": 4, "W": 4},
]}
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _suite_file(tmp_path, data, name="suite.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def _computes(layer, direction, algo) -> bool:
    """Whether `algo` computes the layer (one that refuses it, NotCovered, is left out)."""
    try:
        ops.make_case(layer, direction).convkit_fn(algo)()
    except _registry.NotCovered:
        return False
    return True


def _expected_rows():
    """(layer, direction, impl) the run must report: every registered algorithm that
    computes the layer + the reference."""
    return {(layer.name, d, algo) for layer in suite.parse_suite(TINY) for d in ops.DIRECTIONS
            for algo in ops.algorithms(layer.op, d) if _computes(layer, d, algo)}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One CLI run shared by the output tests (the peak measurement costs a second or two)."""
    tmp = tmp_path_factory.mktemp("bench")
    out = {"json": tmp / "r.json", "markdown": tmp / "r.md", "plot": tmp / "r.png"}
    argv = ["bench", "--suite", _suite_file(tmp, TINY), "--repeat", "2", "--json", str(out["json"]),
            "--markdown", str(out["markdown"])]
    if HAS_MATPLOTLIB:
        argv += ["--plot", str(out["plot"])]
    mp = pytest.MonkeyPatch()
    stdout, stderr = io.StringIO(), io.StringIO()
    mp.setattr(sys, "stdout", stdout)
    mp.setattr(sys, "stderr", stderr)
    try:
        code = main(argv)
    finally:
        mp.undo()
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_bench_exits_0_with_a_row_per_layer_direction_and_implementation(bench_run):
    code, stdout, stderr, _ = bench_run
    assert code == 0, stdout + stderr
    rows = {tuple(line.split()[:3]) for line in stdout.splitlines() if line.startswith("tiny_")}
    assert rows == _expected_rows()
    assert "!!" not in stdout
    assert "peak GFLOP/s" in stdout
    assert "12/12" in stderr  # the progress bar reached the end


def test_bench_json_parses_and_checks_every_result(bench_run):
    _, _, _, out = bench_run
    data = json.loads(out["json"].read_text())
    assert {(r["layer"], r["direction"], r["impl"]) for r in data["results"]} == _expected_rows()
    assert data["failures"] == 0
    for r in data["results"]:
        assert r["check"] == ("truth" if r["impl"] == "reference" else "ok")
        assert r["seconds"] > 0 and r["rate"] > 0 and r["memory_bytes"] > 0
        assert r["unit"] == ("GB/s" if r["op"].endswith("pool2d") else "GFLOP/s")
    assert data["machine"]["peak GFLOP/s (float32 matmul, NumPy BLAS)"] > 0


def test_bench_markdown_is_a_table_of_every_result(bench_run):
    _, _, _, out = bench_run
    lines = [line for line in out["markdown"].read_text().splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][:3] == ["layer", "dir", "impl"]
    assert set(cells[1]) == {"---"}
    assert all(len(row) == len(cells[0]) for row in cells)
    assert {tuple(row[:3]) for row in cells[2:]} == _expected_rows()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_bench_plot_is_a_png(bench_run):
    _, _, _, out = bench_run
    assert out["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_wrong_result_is_a_failed_row(monkeypatch):
    """An implementation off by a little fails the check, loudly, and is still timed."""
    convkit.implementations("cpu")
    ref = _registry.lookup("conv2d_forward", "reference", "cpu")

    def off_by_a_bit(x, w, bias, geom, activation, layout):
        y = ref.fn(x, w, bias, geom, activation, layout)
        y.flat[0] += 1e-2 * max(1.0, np.abs(y).max())
        return y

    monkeypatch.setitem(_registry._table, ("conv2d_forward", "broken", "cpu"),
                        _registry.Impl("conv2d_forward", "broken", "cpu", off_by_a_bit))
    layer = suite.parse_suite({"layers": TINY["layers"][:1]})[0]
    rows, _ = runner.run_case(ops.make_case(layer, "fwd"), runner.Settings(repeat=1, reference_blocks=1))
    broken = next(r for r in rows if r.impl == "broken")
    assert broken.check == "MISMATCH" and broken.failed and broken.seconds > 0
    assert "tolerance" in broken.detail
    assert all(r.check in ("ok", "truth") for r in rows if r.impl != "broken")


BAD_SUITES = [
    ("not json", "{", "not valid JSON"),
    ("no layers", {"layers": []}, '"layers"'),
    ("unknown op", {"layers": [{"name": "a", "op": "conv3d", "N": 1}]}, "'op'"),
    ("missing K", {"layers": [{"name": "a", "op": "conv2d", "N": 1, "C": 1, "H": 4, "W": 4, "kernel": 3}]},
     "['K']"),
    ("negative K", {"layers": [{"name": "a", "op": "conv2d", "N": 1, "C": 1, "H": 4, "W": 4, "K": -2,
                                "kernel": 3}]}, "'K' must be a positive int"),
    ("typo field", {"layers": [{"name": "a", "op": "max_pool2d", "N": 1, "C": 1, "H": 4, "W": 4, "kernel": 2,
                                "strides": 2}]}, "'strides'"),
    ("kernel too large", {"layers": [{"name": "a", "op": "conv2d", "N": 1, "C": 1, "H": 2, "W": 2, "K": 1,
                                      "kernel": 5}]}, "larger than the padded input"),
    ("bad groups", {"layers": [{"name": "a", "op": "conv2d", "N": 1, "C": 3, "H": 4, "W": 4, "K": 4, "kernel": 1,
                                "groups": 2}]}, "groups=2"),
    ("duplicate", {"layers": [TINY["layers"][5], TINY["layers"][5]]}, "used twice"),
]


@pytest.mark.parametrize("data,message", [b[1:] for b in BAD_SUITES], ids=[b[0] for b in BAD_SUITES])
def test_a_bad_suite_is_a_clear_error(tmp_path, capsys, data, message):
    code = main(["bench", "--suite", _suite_file(tmp_path, data)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    if isinstance(data, dict) and data["layers"] and "name" in data["layers"][0]:
        assert "layer #" in err and repr(data["layers"][-1]["name"]) in err


def test_unknown_layer_name_and_algo_are_clear_errors(tmp_path, capsys):
    path = _suite_file(tmp_path, TINY)
    assert main(["bench", "--suite", path, "--layers", "tiny_conv,nope"]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert main(["bench", "--suite", path, "--algo", "nope"]) == 2
    assert "--algo" in capsys.readouterr().err


def test_default_suite_loads_and_quick_picks_its_layers():
    layers = suite.load_suite()
    assert len(layers) == 22
    assert [layer.name for layer in suite.select(layers, quick=True)] == list(suite.QUICK_LAYERS)


def test_check_passes_and_lists_every_implementation(capsys):
    assert main(["check", "--count", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]) for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in _registry.PRIMITIVES}
    assert rows == {(i.primitive, i.algo, i.device) for i in convkit.implementations("cpu")}
    assert "FAIL" not in out


def test_check_fails_on_a_wrong_implementation(monkeypatch, capsys):
    convkit.implementations("cpu")
    ref = _registry.lookup("avg_pool2d", "reference", "cpu")
    impl = _registry.Impl("avg_pool2d", "broken", "cpu", lambda x, geom, layout: ref.fn(x, geom, layout) * 1.01)
    monkeypatch.setitem(_registry._table, ("avg_pool2d", "broken", "cpu"), impl)
    assert main(["check", "--count", "2", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "avg_pool2d           broken" in out and "FAIL" in out and "off by" in out


@pytest.mark.parametrize("layer", suite.parse_suite(TINY), ids=lambda layer: layer.name)
def test_torch_runs_every_op_and_agrees(layer):
    """The PyTorch member of each op (forward, and the aten backward autograd calls)."""
    pytest.importorskip("torch")
    settings = runner.Settings(against_torch=True, repeat=1, reference_blocks=1)
    for direction in ops.DIRECTIONS:
        rows, _ = runner.run_case(ops.make_case(layer, direction), settings)
        torch_row = next(r for r in rows if r.impl == "torch")
        assert torch_row.check == "ok", torch_row.detail
        assert all(r.vs_torch is not None for r in rows)


def test_algo_filter_takes_auto_and_notes_what_a_case_lacks():
    layer = suite.parse_suite(TINY)[3]  # max pooling
    settings = runner.Settings(algos=("direct", "auto"), repeat=1, reference_blocks=1)
    rows, notes = runner.run_case(ops.make_case(layer, "fwd"), settings)
    has_direct = "direct" in ops.algorithms("max_pool2d", "fwd")
    assert {r.impl for r in rows} == {"reference", "auto"} | ({"direct"} if has_direct else set())
    assert any("'direct' does not provide max_pool2d" in n for n in notes) != has_direct
    assert all(r.check in ("ok", "truth") for r in rows)


def test_check_names_a_primitive_it_has_no_case_for(monkeypatch, capsys):
    convkit.implementations("cpu")
    monkeypatch.setattr(_registry, "PRIMITIVES", _registry.PRIMITIVES + ("new_primitive",))
    monkeypatch.setitem(_registry._table, ("new_primitive", "direct", "cpu"),
                        _registry.Impl("new_primitive", "direct", "cpu", lambda *a: None))
    assert main(["check", "--count", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert ["new_primitive", "direct", "cpu", "0", "0", "-", "SKIP"] in [line.split() for line in out.splitlines()]
    assert "new_primitive: NOT CHECKED" in out
