"""algo="auto": which implementation runs for a call, and why.

Two ways to choose, both per call shape:

- rules (the default): the small table ``_RULES`` below, first match wins. Each rule
  comes from side-by-side measurements of the candidates on the layer suite
  (bench/im2col_vs_direct.py, numbers in bench/RESULTS.md) and says why it holds.
- measuring: ``convkit.autotune(True)`` (or CONVKIT_AUTOTUNE=1) times every compiled
  candidate once per new (primitive, geometry, dtype, layout, threads, ISA) on synthetic
  arrays of that shape (warmed up, interleaved rounds: the median of thread CPU time at
  one thread, the minimum of the wall clock above) and keeps the fastest in an in-process
  cache. With ``persist=True`` (or CONVKIT_AUTOTUNE=persist) the cache is also kept as JSON in the
  user's cache directory ($XDG_CACHE_HOME or ~/.cache, then convkit/autotune.json), so a
  new process starts measured.

``convkit.explain(op, input_shape, weight_shape, ...)`` says which algorithm each
primitive of an op would run, and why.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _args
from ._registry import forget_auto_choices
from ._runtime import get_isa, get_num_threads
from ._version import __version__


@dataclass(frozen=True)
class Choice:
    algo: str
    reason: str


# ------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class _Rule:
    name: str
    applies: object  # (primitive, geom, dtype, threads) -> bool
    algo: str
    why: str


_FORWARD, _GRAD_INPUT, _GRAD_WEIGHT = "conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight"


def _macs(g) -> int:
    return g.flops // 2


# Below this many multiply-adds a call is "tiny" (see its rule).
_TINY_MACS = 1 << 16


def _padded_area(g) -> int:
    return (g.H + g.padding[0] + g.padding[1]) * (g.W + g.padding[2] + g.padding[3])


# Winograd's weight pairs (C x K) per 4x4 output tile it needs at least (see its rule).
_WINOGRAD_PAIRS_PER_TILE = 8192
# Its time against the direct engine's, predicted (see its rule): at most this ratio, with
# this cost of the transforms per channel relative to a product's multiply-adds.
_WINOGRAD_MAX_RATIO = 0.9
_WINOGRAD_TRANSFORM_COST = 32
# Grad-weight by Winograd (F(3x3, 4x4) on the forward's tiles) needs at least this many
# times fewer multiplies than the kernel's taps, and this many outputs (see its rule).
_WINOGRAD_GW_MIN_FEWER = 3
_WINOGRAD_GW_MIN_OUTPUTS = 128


def _winograd_pays(primitive: str, g) -> bool:
    """Whether Winograd (which computes g: the rules only see covering candidates) does
    enough fewer multiplies for its transforms and channel padding, on tiles full and
    many enough for its weight transform (see its rule). In stride-phase terms: the
    reduction has s*s*C channels (grad-input: K), padded to a vector of 16, the products
    2.25 s*s multiplies per output and reduction channel instead of the kernel's kh*kw;
    4x4 output tiles per dilation sub-grid over the primitive's output (grad-input: the
    input's phases), at least one per _WINOGRAD_PAIRS_PER_TILE weight pairs, and >= 60%
    of their outputs real: inside the image, and (forward, stride 1) reading some input,
    not only padding (a padding past the kernel's reach: Winograd computes those outputs
    in full, the direct engine skips their taps)."""
    sh, sw = g.stride
    fewer_multiplies = g.kh * g.kw / (2.25 * sh * sw)
    if primitive == _GRAD_WEIGHT:  # the forward's tiles and channels, and more to gain
        return (fewer_multiplies >= _WINOGRAD_GW_MIN_FEWER and g.N * g.OH * g.OW >= _WINOGRAD_GW_MIN_OUTPUTS
                and _winograd_pays(_FORWARD, g))
    phase_c = sh * sw * g.C
    red, out = (phase_c, g.K) if primitive == _FORWARD else (g.K, phase_c)
    red_padded = -(-red // 16) * 16
    ratio = (red_padded / red + _WINOGRAD_TRANSFORM_COST * (red_padded + out) / (red * out)) / fewer_multiplies
    if ratio > _WINOGRAD_MAX_RATIO:
        return False
    oh, ow = (g.OH, g.OW) if primitive == _FORWARD else (-(-g.H // sh), -(-g.W // sw))

    def tiles_across(size, d):  # sub-grid i has ceil((size - i) / d) outputs, in tiles of 4
        return sum(-(-(-(-(size - i) // d)) // 4) for i in range(min(d, size)))

    def real(size, before, after, d):  # outputs whose 3 taps are not all in the padding
        return size - max(0, before - 2 * d) - max(0, after - 2 * d) if primitive == _FORWARD else size

    tiles = tiles_across(oh, g.dilation[0]) * tiles_across(ow, g.dilation[1])
    real_outputs = (real(oh, *g.padding[:2], g.dilation[0]) * real(ow, *g.padding[2:], g.dilation[1])
                    if (sh, sw) == (1, 1) else oh * ow)
    return g.N * tiles * _WINOGRAD_PAIRS_PER_TILE >= phase_c * g.K and real_outputs >= 0.6 * 16 * tiles


# First match wins; a rule whose algorithm is not built is skipped. Every number is a
# time ratio im2col / direct (below 1: im2col faster) measured per primitive, float32,
# one thread, CPU time (immune to the shared machine's load), same build: the SIMD
# direct engine against SciPy's OpenBLAS (bench/im2col_vs_direct.py, bench/RESULTS.md).
# Re-measure when either side changes (last: the direct engine's padding-skipping and
# backward kernels, and im2col's pixel-major NCHW forward). Shapes: suite layers by name,
# others as C/K/groups/kernel on 56x56.
_RULES = (
    # The direct engine's SIMD kernels are float32; its float64 path is plain loops:
    # 3x3 C=K=64 5.0x / 6.3x / 5.2x slower than dgemm (forward / grad-input / grad-weight).
    _Rule("float64", lambda p, g, dt, threads: dt == np.float64, "im2col",
          "float64: the GEMM runs at dgemm speed, the direct engine's float64 path is plain loops (5-6x slower)"),
    # Tiny calls: im2col's fixed cost (the column buffer, the Cython and BLAS calls: ~8 us)
    # outweighs the work. One input channel, one thread: 1x1x8x8 3x3 grad-input 2.0,
    # grad-weight 2.6; 1x6x16x16 5x5 (21600 multiply-adds) 1.0 / 2.0; 4x6x16x16 (86400)
    # 0.91 / 1.42; from 470400 on the LeNet shapes' rules below win (0.90 / 0.71).
    _Rule("tiny call", lambda p, g, dt, threads: _macs(g) < _TINY_MACS, "direct",
          f"fewer than {_TINY_MACS} multiply-adds: im2col's fixed cost (~8 us: column buffer, BLAS call) outweighs "
          "the work (measured 1.0-2.6x slower on such calls)"),
    # Depthwise 3x3 on 56x56x144: 3.9 / 3.8 (forward / backward pass); 5x5 on C=64: 4.7 /
    # 5.2 / 4.9. Each group's GEMM is a matrix-vector product.
    _Rule("depthwise", lambda p, g, dt, threads: g.C == g.groups > 1, "direct",
          "depthwise: the direct engine's own kernels; a GEMM per channel is a matrix-vector product "
          "(measured 2-5x slower)"),
    # Winograd F(4x4, 3x3) (float32 3x3 stride 1, groups 1; forward and grad-input): 36
    # multiplies per 16 outputs instead of 144, so it wins where its 4x4 tiles are full
    # and the weight transform (36 x C x K floats, redone by every call: training changes
    # the weights every step) is spread over enough tiles. Time ratios winograd / direct,
    # one thread, CPU time, weights new at every call (bench/winograd_vs_direct.py
    # --fresh-weights; with repeated weights, whose transform is kept, Winograd does
    # better still, 0.44-0.68): ResNet 3x3 64 on 56x56 0.52 / 0.52 (forward /
    # grad-input), batch 8 0.64 / 0.64, ResNet 3x3 256 on 14x14 (16 tiles) 0.54 / 0.58,
    # VGG 128 on 112x112 0.50 / 0.54, DeepLab dilation 2 on 33x33 (100 tiles, 68% full)
    # 0.53 / 0.58 (08:40 run on a busy machine; 0.1 apart between runs). The
    # weight transform and its 36 x C x K floats outweigh the products on few tiles and
    # many channels: C = K = 256 on 8x8 (4 tiles) 0.85 / 1.01, on 4x4 2.7 / 2.4, C = K =
    # 512 on 7x7 1.3 / 1.8, on 14x14 0.86 / 1.05; with C = K = 128 4 tiles still win (0.71
    # / 0.79), with 32 one (0.70): hence one tile per 8192 (C x K) pairs. Left to the
    # others too: ASPP rate 12 (144 one-tile sub-grids, 47% full, mostly padding that the
    # direct engine skips: 1.12 / 1.47) and tiles of outputs that read padding only (a
    # tiny image with a padding past the kernel's reach). Its error, <= 2e-5 of the
    # output's scale on those layers (direct: ~2e-6), is within the float32 tolerance.
    # Strided layers run on stride phases (src/conv_winograd.h): s*s*C channels of 3x3,
    # 2.25 s*s multiplies per output and channel against kh*kw, and few channels padded
    # to a vector. Measured, forward / grad-input, one thread CPU time, 56x56 unless
    # said: AlexNet conv1 (48 phase channels, 3.4x fewer multiplies) 0.68 / 0.38, DCGAN's
    # 4x4 stride 2 (256 phase channels, 1.8x fewer) 0.77 / 0.82, 5x5 stride 2 C=32 K=64
    # 0.55 / 0.59, 6x6 stride 2 C=16 0.51 / 0.41; but 8x8 stride 4 C=3 K=64 (1.8x fewer
    # on 48 channels) 1.25 / 0.74, 5x5 stride 2 C=3 K=32 (12 channels padded to 16)
    # 1.64 / 1.18, 2x2 stride 1 1.00 / 0.78, and at stride 1 3x3 C=3 K=64 on 224x224
    # (3 channels padded to 16) 4.8 / 3.0, C=16 0.75 / 0.73, C=K=32 0.67 / 0.60. Fitted
    # over those 11 layers' forwards (within 0.1 but two, both on the safe side):
    # winograd / direct = (Cp / C + 32 (Cp + K) / (C K)) / (kh kw / (2.25 s s)), C the
    # reduction's phase channels, Cp padded to 16; Winograd where that is <= 0.9. Those
    # strided measurements repeated the weights (their transform cached); with new
    # weights at every call (training) AlexNet conv1 stays 0.66 / 0.54, while DCGAN's
    # 4.7 MB of transformed weights, remade per super-block, bring it to 1.03 / 0.97:
    # even, not a loss (bench/winograd_vs_direct.py --fresh-weights, one thread).
    # Grad-weight runs F(3x3, 4x4) on the forward's tiles (a tile of grad_output is the
    # kernel), its sums kept in the transform domain: the same tiles and channels as the
    # forward, but nothing to cache, and its fixed costs (the channels-last copies of x
    # and grad_output, 36 x C x K sums transformed back) weigh more. Direct / winograd
    # time, one thread, wall clock (probes of 21:10-22:10): ResNet 3x3 64 on 56x56 2.3,
    # batch 8 1.74, 128 on 28x28 2.18, 256 on 14x14 (16 tiles) 1.11 (two threads 1.16),
    # batch 4 1.75, VGG 128 2.5, DeepLab dilation 2 1.97 (64 channels 1.78), C = K = 32
    # 1.39, AlexNet conv1 1.62; but C = K = 16 0.72, 512 on 7x7 (4 tiles) 0.57 (both left
    # out by the forward's conditions), one tile of C = K = 32 0.69 (its fixed costs), and
    # 3x3 stride 2 (no fewer multiplies) 0.34. With under 3x fewer multiplies it wins
    # alone but not in a backward pass: DCGAN's 4x4 stride 2 (1.8x) 1.11 (two threads
    # 1.14), 5x5 stride 2 C=32 K=64 (2.8x) 1.17 (1.03), yet DCGAN's backward, whose
    # grad-input is Winograd too, read 0.94-0.96 of PyTorch's speed at two threads
    # against 1.03-1.05 with the direct engine's grad-weight (the two halves' buffers
    # evict each other's from the L3, as on DeepLab, where 4x fewer multiplies pay for
    # it). Hence the forward's conditions, >= 3x fewer multiplies and >= 128 outputs.
    _Rule("winograd", lambda p, g, dt, threads: dt == np.float32 and _winograd_pays(p, g),
          "winograd",
          "float32 layer whose stride phases make a 3x3 kernel with enough channels for the transforms (predicted "
          "<= 0.9 of the direct engine's time), >= 1 Winograd tile per 8192 weight pairs, >= 60% of the tiles' "
          "outputs real (in the image, not reading padding only), and for grad-weight >= 3x fewer multiplies "
          "than the kernel's taps: F(4x4, 3x3) (grad-weight: F(3x3, 4x4)) does up to 4x fewer multiplies (measured "
          "1.3-2.6x faster than the direct engine with new weights at every call)"),
    # Mostly padding: DeepLab ASPP (dilation 12, padding 12 on 33x33, a padded plane 3x
    # the image) 1.40 / 1.38 / 1.59, 3x3 dilation 4 on 56x56x64 (padded plane 1.3x) 1.42 /
    # 1.30 / 1.71. The column copy writes padded taps as zeros and the GEMM multiplies
    # them; the direct engine skips them. Ahead of "few pixels per channel", which ASPP
    # also meets.
    _Rule("mostly padding", lambda p, g, dt, threads: _padded_area(g) >= 2 * g.H * g.W, "direct",
          "the padded input is at least twice the image: the direct engine skips taps in the padding, the "
          "column matrix holds them as zeros that the GEMM multiplies (ASPP rate 12: im2col 1.4-1.6x slower)"),
    # More than one thread: every float32 rule below picks im2col for a gain measured at one
    # thread (0.23-0.97). At two threads SciPy's OpenBLAS runs the GEMM on its own worker
    # threads, which then busy-wait ~100 ms for the next GEMM (measured: a worker's 10 CPU
    # ticks in the second after one im2col call) on the cores the direct engine's threads
    # need for the primitives and layers that follow: one im2col call left the direct
    # engine's Inception 1x7 forward 10% slower, and the suite at 2 threads
    # (bench/conv_vs_torch.py --algo auto against --algo direct, 3 runs each) measured
    # Inception 1x7 backward 0.71x against 0.96x torch, ResNet 3x3 256 backward 0.66x
    # against 0.94x, LeNet backward 2.9x against 4.0x with these rules.
    _Rule("several threads", lambda p, g, dt, threads: threads > 1 and dt == np.float32, "direct",
          "float32 on more than one thread: im2col's BLAS worker threads keep spinning after each GEMM on the "
          "cores the direct engine needs next (measured: the suite's backward passes 0.66-0.71x torch with "
          "im2col, 0.94-0.96x without)"),
    # Few pixels per channel (<= 5 output pixels per input channel, >= 128 channels):
    # grad-input on ResNet 3x3 14x14x256 0.83, DeepLab 3x3 d2 on 33x33x256 0.94, Inception
    # 1x7 on 17x17x128 0.97; 1x1 kernels, Xception 19x19x728: 0.95 / 0.94 / 0.92. Spatial
    # kernels keep their forward and grad-weight direct: ResNet 1.25 / 0.94, DeepLab 1.23
    # / 1.20, Inception 1.01 / 1.34.
    _Rule("few pixels per channel",
          lambda p, g, dt, threads: (p == _GRAD_INPUT or g.kh * g.kw == 1) and g.C // g.groups >= 128
          and g.OH * g.OW <= 5 * (g.C // g.groups),
          "im2col",
          "grad-input (or a 1x1 kernel) with <= 5 output pixels per input channel (>= 128 channels): long "
          "GEMMs over the channels, while the direct engine's pixel tiles run short"),
    # One input channel (grayscale first layers), grad-input on small images: LeNet
    # (64 x 32x32, K=6, 5x5) 0.73, K=16 0.42, K=32 0.23, 3x3 0.92; the direct engine's
    # tiles over input channels are mostly empty. On a 224x224 image it wins again (1.93).
    _Rule("one input channel", lambda p, g, dt, threads: p == _GRAD_INPUT and g.C == g.groups and g.OH * g.OW < 4096,
          "im2col",
          "grad-input into one channel per group on fewer than 4096 pixels per image: the direct engine's "
          "channel tiles are mostly empty, the GEMM is over all the taps"),
    # Large strides into few input channels, grad-input: AlexNet conv1 (3 channels, 11x11
    # stride 4) 0.69, the same on 131x131 0.53, 3 channels 7x7 / 8x8 / 4x4 stride 4 0.69 /
    # 0.70 / 0.71, a 16x16 stride-16 patch embedding to 256 channels 0.17, 16 channels
    # 11x11 stride 4 0.80, 5x5 stride 3 0.84 (one thread, CPU time, grad-input alone,
    # 128x128 images unless named). The direct engine splits a grad-input into stride^2
    # phases, small convolutions into few channels whose tiles are mostly empty; the GEMM
    # runs over all the output channels and taps at once. At stride 2 the direct engine
    # wins again (ResNet stem 7x7: 1.17, 3x3 on 224x224: 1.23).
    _Rule("large stride into few channels",
          lambda p, g, dt, threads: p == _GRAD_INPUT and min(g.stride) >= 3 and g.C // g.groups <= 16,
          "im2col",
          "grad-input at stride >= 3 into <= 16 channels per group: the direct engine's stride phases are small "
          "convolutions with mostly empty channel tiles, the GEMM is over all the output channels and taps"),
    # Narrow weight gradients: LeNet 0.77 (6 outputs, one input channel), one input
    # channel with 16 / 32 outputs 0.69 / 0.51, 3x3 C=3 K=8 0.72, groups of 2 or 4
    # channels 0.26 / 0.49; 1x1 with 8 / 16 channels 0.39 / 0.85, but 64 channels 1.13.
    # The direct engine wins at 9 outputs per group with 9 inputs (2.3) and with 64+
    # outputs and a spatial kernel (1.2-1.7). Since im2col's grad-weight sums column-major
    # on long tiles, ResNet's 1x1 256->64 is 0.95 (was 1.13): left to the direct engine,
    # within the 10% auto allows.
    _Rule("narrow grad-weight",
          lambda p, g, dt, threads: p == _GRAD_WEIGHT and (g.K // g.groups <= 8 or g.C == g.groups
                                                  or (g.kh * g.kw == 1 and g.K // g.groups <= 16)),
          "im2col",
          "weight gradient with <= 8 outputs or one input channel per group, or a 1x1 kernel with <= 16 outputs: "
          "one GEMM over all pixels, where the direct engine's outer-product tiles are mostly empty"),
    # Everything else: forward 1.2-3.1 (ResNet 3x3 64: 1.43, VGG: 1.27, stems: 1.6-1.8),
    # backward 1.1-1.5 on the dense layers of the suite; 1x1 forward and grad-input 1.0-1.3.
    _Rule("dense", lambda p, g, dt, threads: True, "direct",
          "the direct engine's SIMD kernels read the input in place, without the column copy and the BLAS "
          "packing pass (measured 1.1-2x faster on the suite's dense layers)"),
)

# When the rule's algorithm is missing (extension not built): the compiled paths first,
# the NumPy reference (exact but slow) only when nothing compiled is there.
_FALLBACK = ("direct", "im2col", "reference")


def _by_rules(primitive: str, geom, dtype, candidates: tuple, threads: int) -> Choice:
    """The first rule that applies (calls memoise the result: convkit._registry.lookup)."""
    if geom is not None and primitive.startswith("conv2d"):
        dt = np.dtype(dtype if dtype is not None else np.float32)
        for rule in _RULES:
            if rule.applies(primitive, geom, dt, threads) and rule.algo in candidates:
                return Choice(rule.algo, f"rule '{rule.name}': {rule.why}")
    for algo in _FALLBACK:
        if algo in candidates:
            return Choice(algo, f"{algo!r} is the first available of {_FALLBACK} (no shape rule applies)")
    return Choice(candidates[0], "the only implementation registered")


# -------------------------------------------------------------------------- autotune
def _env_mode() -> tuple:
    raw = os.environ.get("CONVKIT_AUTOTUNE", "").strip().lower()
    modes = {"": (False, False), "0": (False, False), "off": (False, False), "false": (False, False),
             "1": (True, False), "on": (True, False), "true": (True, False), "persist": (True, True)}
    if raw not in modes:
        raise ValueError(f"CONVKIT_AUTOTUNE must be one of 0, 1, persist, got {raw!r}")
    return modes[raw]


_enabled, _persist = _env_mode()
# The measurements, keyed by text (as persisted): {"algo": fastest, "seconds": {algo: s}};
# and the choices made from them, keyed by the call's tuple, so that a cached call costs
# a dict lookup rather than formatting its key and reason again.
_measured: dict = {}
_cache: dict = {}
# Interleaved timed rounds, each candidate's time the median or the minimum of its rounds
# (see _clock): at least _ROUNDS, more (up to _MAX_ROUNDS) while the measurement has
# taken less than _BUDGET seconds, so that on a shared machine clean rounds are likely. Calls slower
# than _SLOW_CALL get one round: a disturbance is a small part of them. When the two
# fastest are within _CLOSE of each other, they get a second set of rounds of their own:
# there a disturbed round can swap them (the suite's autotune misses were candidates
# 6-36% apart, timed on a machine with 4-9 runnable processes per 2 cores).
_ROUNDS, _MAX_ROUNDS, _BUDGET, _SLOW_CALL, _CLOSE = 3, 10, 0.25, 0.5, 0.15


def autotune(enabled: bool = True, *, persist: bool = False) -> None:
    """Switch algo="auto" to measuring (True) or back to the rules (False).

    Measuring times every compiled candidate once per new call shape and keeps the fastest
    in an in-process cache; persist=True also loads and saves it as JSON in the user's
    cache directory ($XDG_CACHE_HOME or ~/.cache, then convkit/autotune.json).
    """
    global _enabled, _persist
    if not isinstance(enabled, bool) or not isinstance(persist, bool):
        raise TypeError(f"enabled and persist must be bools, got {enabled!r}, {persist!r}")
    _enabled, _persist = enabled, enabled and persist
    forget_auto_choices()  # the registry's memo of rule choices must not answer for measuring
    if _persist:
        _measured.update(_load())


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convkit" / "autotune.json"


def _load() -> dict:
    """Entries of this convkit version (other versions' kernels may differ); {} if none."""
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("convkit") != __version__ or not isinstance(data.get("entries"), dict):
        return {}
    return {k: e for k, e in data["entries"].items()  # a hand-edited file must not break a call
            if isinstance(e, dict) and isinstance(e.get("algo"), str) and isinstance(e.get("seconds"), dict)}


def _save() -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"convkit": __version__, "entries": {**_load(), **_measured}}, indent=1))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    except OSError:
        pass  # a read-only home must not break a convolution; the in-process cache still holds


if _persist:  # CONVKIT_AUTOTUNE=persist: start from what earlier processes measured
    _measured.update(_load())


def _key_text(primitive: str, g, dtype: np.dtype, layout: str, threads: int, isa: str) -> str:
    return (f"{primitive} x{(g.N, g.C, g.H, g.W)} w{(g.K, g.C // g.groups, g.kh, g.kw)} s{g.stride} "
            f"p{g.padding} d{g.dilation} g{g.groups} {dtype} {layout} threads={threads} isa={isa}")


def _runner(primitive: str, geom, dtype, layout: str):
    """run(algo): one call of the primitive through the API's own path (layout transposes
    included: they are part of what a choice costs), on random arrays of the call's shapes."""
    from . import functional as F
    from ._registry import lookup

    g, rng = geom, np.random.default_rng(0)

    def impl(algo):
        return lookup(primitive, algo, "cpu", g, dtype, layout)

    def arr(n, c, h, w):
        shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
        return rng.standard_normal(shape).astype(dtype)  # not zeros: no zero/denormal shortcuts

    w = rng.standard_normal((g.K, g.C // g.groups, g.kh, g.kw)).astype(dtype)
    if primitive == "conv2d_forward":
        x = arr(g.N, g.C, g.H, g.W)
        return lambda algo: F._conv_forward(x, w, None, g, None, layout, impl(algo))
    gy = arr(g.N, g.K, g.OH, g.OW)
    if primitive == "conv2d_grad_input":
        return lambda algo: F._conv_grad_input(gy, w, g, layout, impl(algo))
    x = arr(g.N, g.C, g.H, g.W)
    return lambda algo: F._conv_grad_weight(gy, x, g, layout, impl(algo))


def _clock():
    """(timer, statistic) of a measurement. At one thread every kernel (convkit's pool and
    the BLAS, which follows convkit's count) runs in the calling thread, so that thread's
    CPU time is the call's cost, which other processes cannot inflate: the median of the
    rounds, robust to the rare misreading of a virtual machine's CPU clock (seen: one call
    at half its time in ~100). With more threads, the wall clock (CPU time would add up
    every thread, waiting included), which load only ever inflates: the minimum."""
    return (time.thread_time, statistics.median) if get_num_threads() == 1 else (time.perf_counter, min)


def _measure(primitive: str, geom, dtype, layout: str, candidates: list) -> dict:
    """Seconds per call of each candidate: a warm-up call each (first-call costs such as
    thread wake-up and scratch allocation are not the algorithm's), then interleaved timed
    rounds, and more rounds for the two fastest when they are close."""
    run = _runner(primitive, geom, dtype, layout)
    clock, statistic = _clock()
    warm_up = []
    for algo in candidates:
        start = clock()
        run(algo)
        warm_up.append(clock() - start)
    fewest, most = (1, 1) if max(warm_up) > _SLOW_CALL else (_ROUNDS, _MAX_ROUNDS)
    samples = {algo: [] for algo in candidates}

    def rounds(algos):
        begin = time.perf_counter()
        for done in range(most):
            if done >= fewest and time.perf_counter() - begin >= _BUDGET:
                break
            for algo in algos:
                start = clock()
                run(algo)
                samples[algo].append(clock() - start)

    rounds(candidates)
    seconds = {algo: statistic(t) for algo, t in samples.items()}
    first, second = sorted(candidates, key=seconds.get)[:2]
    if seconds[second] < (1 + _CLOSE) * seconds[first]:
        rounds((first, second))
    return {algo: statistic(t) for algo, t in samples.items()}


def _by_measuring(primitive: str, geom, dtype, layout: str, candidates: list) -> Choice:
    # The NumPy reference is only a last resort: never worth timing next to compiled code.
    timed = [a for a in candidates if a != "reference"] or list(candidates)
    if len(timed) == 1:
        return Choice(timed[0], "autotune: the only compiled candidate, nothing to measure")
    # np.dtype(dtype), not its .name: 5 us in NumPy 2, 5% of a LeNet-sized call served from the cache
    key = (primitive, geom, np.dtype(dtype), layout, get_num_threads(), get_isa())
    choice = _cache.get(key)
    if choice is not None and choice.algo in timed:
        return choice
    text = _key_text(*key)
    entry = _measured.get(text)
    if entry is None or entry["algo"] not in timed:
        seconds = _measure(primitive, geom, dtype, layout, timed)
        entry = _measured[text] = {"algo": min(seconds, key=seconds.get), "seconds": seconds}
        if _persist:
            _save()
    times = ", ".join(f"{a} {1e3 * s:.3g} ms" for a, s in sorted(entry["seconds"].items(), key=lambda kv: kv[1]))
    choice = _cache[key] = Choice(entry["algo"], f"autotune: measured fastest for this shape ({times})")
    return choice


def choose(primitive: str, geom, device: str, candidates: list, dtype=None, layout=None) -> Choice:
    """The algorithm algo="auto" runs for one primitive call."""
    if device == "cuda":
        return _choose_cuda(primitive, geom, candidates)
    if _enabled and primitive.startswith("conv2d") and geom is not None and dtype is not None:
        return _by_measuring(primitive, geom, dtype, layout or "NCHW", candidates)
    return _by_rules(primitive, geom, dtype, tuple(candidates), get_num_threads())


def _choose_cuda(primitive: str, geom, candidates: list) -> Choice:
    """Dense layers to the implicit GEMM, the rest to the direct kernels.

    From the kernels' cost models (no GPU has measured them yet): the GEMM's 4x4 register
    tile does 16 multiply-adds per 8 shared loads where the direct kernel does about one
    per load, but its 64-row tiles are mostly empty when a group has few channels
    (depthwise: one), where the direct kernels' shared input tile wins.
    """
    if "implicit_gemm" in candidates and primitive.startswith("conv2d") and geom is not None:
        if min(geom.C, geom.K) // geom.groups >= 16:
            return Choice("implicit_gemm", "dense layer (>= 16 channels per group in and out): the register-tiled "
                                           "GEMM reuses each loaded value 4 times")
    if "direct" in candidates:
        return Choice("direct", "few channels per group (depthwise, stems) or pooling: the direct kernels")
    return Choice(candidates[0], "the only CUDA implementation registered")


# --------------------------------------------------------------------------- explain
# The primitives each op runs (conv_transpose2d's forward is conv2d's grad-input, its
# backward conv2d's forward and grad-weight; depthwise is conv2d with groups == C).
_OP_PRIMITIVES = {
    "conv2d": ("conv2d_forward",),
    "conv2d_backward": ("conv2d_grad_input", "conv2d_grad_weight"),
    "depthwise_conv2d": ("conv2d_forward",),
    "depthwise_conv2d_backward": ("conv2d_grad_input", "conv2d_grad_weight"),
    "conv_transpose2d": ("conv2d_grad_input",),
    "conv_transpose2d_backward": ("conv2d_forward", "conv2d_grad_weight"),
}


@dataclass(frozen=True)
class Explanation:
    """What algo="auto" would run for an op: (primitive, Choice) per step."""

    op: str
    description: str
    steps: tuple

    def __str__(self) -> str:
        lines = [f"{self.op} {self.description}:"]
        lines += [f"  {primitive} -> {choice.algo}: {choice.reason}" for primitive, choice in self.steps]
        return "\n".join(lines)

    __repr__ = __str__


def explain(op: str, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *, output_padding=0,
            dtype="float32", layout="NCHW", device="cpu") -> Explanation:
    """Which algorithm algo="auto" would run for `op` on these shapes, and why.

    op: conv2d, depthwise_conv2d or conv_transpose2d, or its *_backward; input_shape in
    `layout`, weight_shape as the op takes it. In autotune mode this measures, as the
    call would, unless the shape is cached. Print the result (or look at .steps).
    """
    from ._registry import check_device, covering

    if op not in _OP_PRIMITIVES:
        raise ValueError(f"op must be one of {tuple(_OP_PRIMITIVES)}, got {op!r}")
    layout = _args.check_layout(layout)
    dtype = np.dtype(dtype)
    if dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    check_device(device)
    if len(input_shape) != 4 or len(weight_shape) != 4:
        raise ValueError(f"input_shape and weight_shape must be 4-D, got {tuple(input_shape)} and "
                         f"{tuple(weight_shape)}")
    nchw = (input_shape[0], input_shape[3], input_shape[1], input_shape[2]) if layout == "NHWC" else input_shape
    if op.startswith("conv_transpose2d"):
        geom, _ = _args.conv_transpose_geometry(nchw, weight_shape, stride, padding, output_padding, groups, dilation)
    else:
        groups = nchw[1] if op.startswith("depthwise") else groups
        geom = _args.conv_geometry(nchw, weight_shape, stride, padding, dilation, groups)
    steps = tuple((p, choose(p, geom, device, covering(p, device, geom, dtype), dtype, layout))
                  for p in _OP_PRIMITIVES[op])
    mode = "autotune" if _enabled else "rules"
    return Explanation(op, f"(input {tuple(input_shape)} {layout}, weight {tuple(weight_shape)}, {dtype.name}, "
                           f"{device}, {mode})", steps)
