"""Determinism: the same call twice gives the same bits, and so does any thread count.

Kernels split work by task index, never by thread id, and reduce in a fixed order
(src/thread_pool.h), so convkit.set_num_threads must not change a single bit of any
result, grad-weight included. The shapes are large enough that every operator splits its
work into many tasks.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import op_cases as oc

THREAD_COUNTS = (1, 2, 3)


@pytest.mark.parametrize("op,algo", oc.op_algo_pairs(include_auto=False, compiled_only=True))
@settings(max_examples=6)
@given(data=st.data())
def test_same_bits_twice_and_for_every_thread_count(op, algo, data):
    case = data.draw(oc.case_strategy(op, oc.LARGE), label="case")
    layout = data.draw(st.sampled_from(oc.LAYOUTS), label="layout")
    isa = data.draw(st.sampled_from(oc.isas()), label="isa")
    results = {}
    with oc.isa_cap(isa):
        for n in THREAD_COUNTS:
            with oc.num_threads(n):
                results[n] = [case.call_raw(layout, algo) for _ in range(2)]
    first = results[THREAD_COUNTS[0]][0]
    for n, runs in results.items():
        for run, got in enumerate(runs):
            for i, (a, b) in enumerate(zip(first, got)):
                assert (a is None) == (b is None)
                if a is not None:
                    assert np.array_equal(a, b, equal_nan=True), (
                        f"output {i} of {case.describe()} ({layout}, {algo}, {isa}) differs with "
                        f"{n} threads (call {run + 1}) from the first call with {THREAD_COUNTS[0]} thread")
