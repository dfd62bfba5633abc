"""LeNet-5 on convkit's PyTorch ops, trained on synthetic digits (nothing is downloaded).

    python examples/lenet5.py [--steps 300] [--seed 0] [--ops convkit|torch]

The model is torch.nn code throughout; only its convolutions and poolings come from
``convkit.torch``, whose functions have torch.nn.functional's signatures, so
``LeNet5(ops=torch.nn.functional)`` is the same network on PyTorch's own kernels
(tests/test_lenet5.py trains the two side by side and compares their losses).

The data are seven-segment digits drawn with anti-aliased strokes of random size, position,
slant and thickness on a 32x32 canvas, plus Gaussian noise: like handwriting, no two
samples of a class are alike, and a linear model cannot read them.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import convkit.torch

SIZE = 32

# Segment ends on a 1-wide, 2-tall box, y down: a top, b/c right, d bottom, e/f left, g middle.
_SEGMENT_ENDS = {"a": ((0, 0), (1, 0)), "b": ((1, 0), (1, 1)), "c": ((1, 1), (1, 2)), "d": ((0, 2), (1, 2)),
                 "e": ((0, 1), (0, 2)), "f": ((0, 0), (0, 1)), "g": ((0, 1), (1, 1))}
_DIGIT_SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")
# (digit, segment) -> 1 where the digit lights the segment
_LIT = np.array([[s in segs for s in _SEGMENT_ENDS] for segs in _DIGIT_SEGMENTS], dtype=np.float64)


def make_digits(n: int, rng: np.random.Generator) -> tuple:
    """n random glyph images (n, 1, 32, 32) float32 and their labels (n,) int64."""
    labels = rng.integers(0, 10, n)
    width, height = rng.uniform(8, 12, n), rng.uniform(16, 22, n)
    cx, cy = SIZE / 2 + rng.uniform(-4, 4, n), SIZE / 2 + rng.uniform(-3, 3, n)
    slant, thickness = rng.uniform(-0.3, 0.3, n), rng.uniform(1.0, 2.0, n)
    ends = np.array(list(_SEGMENT_ENDS.values()), dtype=np.float64)  # (7, 2 ends, xy)
    # segment ends in pixels, per sample: scale the box, slant it, centre it
    ey = (ends[None, :, :, 1] - 1) * height[:, None, None] / 2
    ex = (ends[None, :, :, 0] - 0.5) * width[:, None, None] - slant[:, None, None] * ey
    p0 = np.stack([ex[:, :, 0] + cx[:, None], ey[:, :, 0] + cy[:, None]], -1)  # (n, 7, 2)
    p1 = np.stack([ex[:, :, 1] + cx[:, None], ey[:, :, 1] + cy[:, None]], -1)
    # distance of every pixel centre to every segment
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    pix = np.stack([xx.ravel(), yy.ravel()], -1)  # (P, 2)
    d = p1 - p0
    t = np.einsum("nspc,nsc->nsp", pix[None, None] - p0[:, :, None], d) / np.einsum("nsc,nsc->ns", d, d)[..., None]
    closest = p0[:, :, None] + np.clip(t, 0, 1)[..., None] * d[:, :, None]
    dist = np.linalg.norm(pix[None, None] - closest, axis=-1)  # (n, 7, P)
    ink = np.clip(thickness[:, None, None] - dist + 0.5, 0, 1) * _LIT[labels][:, :, None]
    images = ink.max(axis=1).reshape(n, 1, SIZE, SIZE) + rng.normal(0, 0.3, (n, 1, SIZE, SIZE))
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


class LeNet5(nn.Module):
    """conv 5x5 (6) -> relu -> max pool 2 -> conv 5x5 (16) -> relu -> max pool 2 -> dense 120 -> 84 -> 10.

    ``ops`` supplies conv2d and max_pool2d: convkit.torch (default) or torch.nn.functional.
    """

    def __init__(self, ops=convkit.torch):
        super().__init__()
        self.ops = ops
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        for conv in (self.conv1, self.conv2):
            x = self.ops.max_pool2d(torch.relu(self.ops.conv2d(x, conv.weight, conv.bias)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def batches(steps: int, batch_size: int, seed: int):
    """The training stream: fresh digits every step, the same for a given seed."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield make_digits(batch_size, rng)


def train(model: nn.Module, steps: int, seed: int, batch_size: int = 64, lr: float = 0.05, log_every: int = 0):
    """SGD with momentum; returns the loss of every step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step, (x, y) in enumerate(batches(steps, batch_size, seed), 1):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps):
            acc = (logits.argmax(1) == y).float().mean().item()
            print(f"step {step:4d}  loss {loss.item():.4f}  batch accuracy {acc:.2f}")
    return losses


def accuracy(model: nn.Module, n: int = 1000, seed: int = 12345) -> float:
    x, y = make_digits(n, np.random.default_rng(seed))
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(steps: int = 300, seed: int = 0, ops=convkit.torch, batch_size: int = 64, log_every: int = 25) -> dict:
    """Train LeNet-5 from ``seed`` for ``steps`` steps; print progress; return losses and held-out accuracy."""
    torch.manual_seed(seed)
    model = LeNet5(ops)
    losses = train(model, steps, seed, batch_size, log_every=log_every)
    acc = accuracy(model)
    if log_every:
        print(f"held-out accuracy after {steps} steps: {acc:.3f}")
    return {"losses": losses, "accuracy": acc}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", choices=("convkit", "torch"), default="convkit")
    args = parser.parse_args()
    main(args.steps, args.seed, convkit.torch if args.ops == "convkit" else F)
