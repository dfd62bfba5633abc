"""pytest-benchmark over the layer suite: `pytest bench/ --benchmark-only`.

One group per layer and direction; its members are every registered CPU algorithm, the
NumPy reference and, when installed, PyTorch. Each member's result is checked against
the reference before it is timed. Kept out of the normal test run (pyproject's testpaths
is ["tests"]). pytest-benchmark times each member on its own, one after the other; for
side-by-side ratios from interleaved blocks use `python -m convkit bench`.
"""
import functools
import importlib.util

import pytest

from convkit._registry import NotCovered
from convkit.bench import ops, suite
from convkit.bench.tolerance import compare

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _members():
    for layer in suite.load_suite():
        for direction in ops.DIRECTIONS:
            impls = ops.algorithms(layer.op, direction) + (["torch"] if HAS_TORCH else [])
            for impl in impls:
                yield pytest.param(layer, direction, impl, id=f"{layer.name}-{direction}-{impl}")


@functools.lru_cache(maxsize=None)
def _case(layer_name, direction):
    layer = next(layer for layer in suite.load_suite() if layer.name == layer_name)
    case = ops.make_case(layer, direction)
    return case, case.convkit_fn("reference")()


@pytest.mark.parametrize("layer,direction,impl", list(_members()))
def test_layer(benchmark, layer, direction, impl):
    case, truth = _case(layer.name, direction)
    fn = case.torch_fn() if impl == "torch" else case.convkit_fn(impl)
    try:
        got = fn()
    except NotCovered as exc:  # as the runner: an algorithm refusing a shape (Winograd: 3x3 stride 1 only)
        pytest.skip(f"{impl} does not compute {layer.name} {direction}: {exc}")
    ok, _, detail = compare(got, truth)
    assert ok, f"{impl} on {layer.name} {direction}: {detail}"
    benchmark.group = f"{layer.name} {direction} ({case.unit}: work {case.work:.4g} per call)"
    benchmark.extra_info.update(work=case.work, unit=case.unit)
    benchmark(fn)
