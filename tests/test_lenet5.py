"""examples/lenet5.py: LeNet-5 on convkit.torch trains step for step like the same net on torch's ops."""
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import lenet5  # noqa: E402

import convkit.torch  # noqa: E402


def test_losses_match_torch_step_by_step():
    torch.manual_seed(7)
    ours, theirs = lenet5.LeNet5(convkit.torch), lenet5.LeNet5(torch.nn.functional)
    theirs.load_state_dict(ours.state_dict())
    steps = 10
    got = lenet5.train(ours, steps, seed=7, batch_size=32)
    want = lenet5.train(theirs, steps, seed=7, batch_size=32)
    assert len(got) == len(want) == steps
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


def test_main_prints_progress(capsys):
    result = lenet5.main(steps=2, seed=0, batch_size=8, log_every=1)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["step", "1"], ["step", "2"]]
    assert lines[-1].startswith("held-out accuracy after 2 steps")
    assert len(result["losses"]) == 2 and 0 <= result["accuracy"] <= 1


def test_digits_are_deterministic_and_balanced():
    x1, y1 = lenet5.make_digits(500, np.random.default_rng(3))
    x2, y2 = lenet5.make_digits(500, np.random.default_rng(3))
    assert x1.shape == (500, 1, 32, 32) and x1.dtype == torch.float32
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert set(y1.tolist()) == set(range(10))
