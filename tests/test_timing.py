"""The benchmarks' one timer (convkit.bench.timing): what it calls, in which order, and
what it counts. A fake clock that advances one unit per call of the timed function makes
every measurement exact."""
from contextlib import contextmanager

import pytest

timing = pytest.importorskip("convkit.bench.timing")


class Fake:
    """fn() advances the clock by `cost`; the log records every event in order."""

    def __init__(self, costs):
        self.now, self.costs, self.log = 0.0, costs, []

    def clock(self):
        return self.now

    def fn(self, name):
        def call():
            self.log.append(("call", name))
            self.now += self.costs[name]
        return call


def test_interleaved_discards_each_blocks_first_call_and_alternates():
    f = Fake({"a": 1.0, "b": 3.0})
    timed = timing.interleaved({"a": f.fn("a"), "b": f.fn("b")}, {"a": 2, "b": 1}, {"a": 3, "b": 2}, f.clock)
    assert [t for t in timed["a"].block_seconds] == [1.0, 1.0, 1.0]
    assert [t for t in timed["b"].block_seconds] == [3.0, 3.0]
    # 1 + 2 calls of a, 1 + 1 of b, round by round; b has only two blocks
    assert [n for _, n in f.log] == ["a"] * 3 + ["b"] * 2 + ["a"] * 3 + ["b"] * 2 + ["a"] * 3


def test_hooks_run_around_blocks_before_calls_and_each_round():
    f = Fake({"a": 1.0})

    @contextmanager
    def around(name):
        f.log.append(("enter", name))
        yield
        f.log.append(("exit", name))

    def before():
        f.log.append(("before", None))
        f.now += 100.0  # untimed: must not reach the block's time

    timed = timing.interleaved({"a": f.fn("a")}, {"a": 2}, {"a": 2}, f.clock, around=around, before=before,
                               each_round=lambda: f.log.append(("round", None)))
    assert timed["a"].block_seconds == (1.0, 1.0)
    one_block = [("enter", "a")] + [("before", None), ("call", "a")] * 3 + [("exit", "a")]
    assert f.log == ([("round", None)] + one_block) * 2


def test_calibrate_fills_the_block_within_floor_and_cap():
    f = Fake({"fast": 0.001, "slow": 1.0})
    calls = timing.calibrate({"fast": f.fn("fast"), "slow": f.fn("slow")}, 0.04, f.clock, floor=3, cap=20)
    assert calls == {"fast": 20, "slow": 3}
    assert timing.calibrate({"fast": f.fn("fast")}, 0.01, f.clock) == {"fast": 10}
