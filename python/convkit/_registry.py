"""One registry maps (primitive, algo, device) to an implementation.

Adding an algorithm is adding rows here (an ``_impl_<algo>.py`` module calls
``register``); the public API, the tests and the benchmarks all iterate over this table.

Every public op is composed from a handful of primitives, so one kernel serves many ops
(conv_transpose2d's forward *is* conv2d's grad-input, depthwise is conv2d with
groups == C, separable is depthwise then a 1x1 conv):

==========================  ==================================================  =========
primitive                   call                                                returns
==========================  ==================================================  =========
conv2d_forward              fn(x, w, bias, geom, activation, layout)            y
conv2d_grad_input           fn(grad_y, w, geom, layout)                         grad_x
conv2d_grad_weight          fn(grad_y, x, geom, layout)                         grad_w
max_pool2d                  fn(x, geom, layout)                                 (y, indices)
max_pool2d_backward         fn(grad_y, indices, geom, layout)                   grad_x
avg_pool2d                  fn(x, geom, layout)                                 y
avg_pool2d_backward         fn(grad_y, geom, layout)                            grad_x
maxout2d                    fn(x, k, layout)                                    y
maxout2d_backward           fn(grad_y, x, k, layout)                            grad_x
==========================  ==================================================  =========

Contract: ``geom`` is a checked ``_args.ConvGeom``/``PoolGeom`` (sizes in NCHW terms);
arrays share one float dtype and arrive in ``layout``, which is always one the
implementation declared (the API transposes otherwise); on the CPU they are
C-contiguous NumPy arrays. ``bias`` may be None; ``activation`` is None or "relu";
indices are int64 flat offsets within each H*W plane (an implementation may return None
for them when ``geom.return_indices`` is False). maxout2d's ``k`` is the channel group
size, already checked to divide C. Results are new arrays of the
input dtype, owned by the caller; nothing aliases an input.

An algorithm that computes only some calls (Winograd: float32 3x3 stride 1) registers
``covers(geom, dtype)``, which returns None for a call it computes and otherwise the
reason it does not. Naming such an algorithm for a call it does not cover raises
``NotCovered`` (a ValueError with that reason); algo="auto" only chooses among the
algorithms that cover the call.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ._cpu import get_num_threads  # lock-free: read on every algo="auto" call

PRIMITIVES = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight",
              "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
              "maxout2d", "maxout2d_backward")
DEVICES = ("cpu", "cuda")

# Modules that register implementations when imported, by device. A module that cannot
# be imported (its extension not built, Numba missing) leaves its rows out and says why.
_PROVIDERS = {
    "cpu": ("convkit._impl_reference", "convkit._impl_direct", "convkit._impl_im2col", "convkit._impl_winograd"),
    "cuda": ("convkit.cuda",),
}


@dataclass(frozen=True)
class Impl:
    primitive: str
    algo: str
    device: str
    fn: Callable
    layouts: tuple = ("NCHW",)
    covers: Callable | None = None  # (geom, dtype) -> None, or why the call is not computed


class NotCovered(ValueError):
    """The named algorithm does not compute this call's shape or dtype (see covers)."""


_table: dict = {}
_missing: dict = {}  # device -> {module: reason it is unavailable}
_loaded: set = set()
# Per-call lookups are memoised (a tiny layer's whole call is a few microseconds):
_ready: set = set()         # devices check_device has accepted (the table only grows)
_algos_cache: dict = {}     # (primitive, device) -> algos(), cleared by register()
# The one memo of what algo="auto"'s rules chose: (primitive, device, geom, dtype, layout,
# threads) -> algo (the rules depend on the thread count, hence the key). Cleared, with
# call_plans, by register(), by switching autotune and by set_isa (forget_auto_choices).
_auto_algos: dict = {}
# Checked calls of the public ops that skip their checks and lookups when repeated
# (functional._plan_key, every op of functional.py but the compositions over others):
# the op's raw-argument key -> its plan (functional._Plan: the kernels the checked call
# ran). Keys hold the thread count too; a plan's algorithm is a name, the rules' choice
# or autotune's measured one (see remember_plan).
call_plans: dict = {}
_MEMO_SIZE = 4096


def register(primitive: str, algo: str, device: str = "cpu", layouts=("NCHW",), covers=None):
    """Decorator: ``@register("conv2d_forward", "direct")`` adds a row."""
    if primitive not in PRIMITIVES:
        raise ValueError(f"unknown primitive {primitive!r}; known: {PRIMITIVES}")

    def add(fn):
        _table[(primitive, algo, device)] = Impl(primitive, algo, device, fn, tuple(layouts), covers)
        _algos_cache.clear()
        forget_auto_choices()
        return fn

    return add


def load(device: str) -> None:
    """Import the provider modules of a device once; remember why any failed."""
    if device in _loaded:
        return
    _loaded.add(device)
    for module in _PROVIDERS[device]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            _missing.setdefault(device, {})[module] = str(exc)


def unavailable(device: str) -> dict:
    load(device)
    return dict(_missing.get(device, {}))


def check_device(device) -> str:
    """A device that has kernels. A bad name is a ValueError; a device this machine or build
    cannot run (no Numba) a RuntimeError, like convkit.cuda's when there is no GPU; both
    list the valid devices."""
    if device in _ready:
        return device
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    load(device)
    if not any(d == device for (_, _, d) in _table):
        reasons = "; ".join(f"{m}: {r}" for m, r in _missing.get(device, {}).items()) or "no kernels registered"
        usable = [d for d in DEVICES if d != device and implementations(d)]
        raise RuntimeError(f"device={device!r} is not available ({reasons}); valid: {usable}")
    _ready.add(device)
    return device


def algos(primitive: str, device: str = "cpu") -> list:
    """Algorithms registered for a primitive on a device, in registration order."""
    load(device)
    key = (primitive, device)
    if key not in _algos_cache:
        _algos_cache[key] = [a for (p, a, d) in _table if p == primitive and d == device]
    return list(_algos_cache[key])


def covering(primitive: str, device: str, geom, dtype) -> list:
    """The algorithms of a primitive that compute this call (see Impl.covers)."""
    rows = (_table[(primitive, a, device)] for a in algos(primitive, device))
    return [r.algo for r in rows if r.covers is None or geom is None or r.covers(geom, dtype) is None]


def implementations(device: str | None = None) -> list:
    """Every registered row (for tests, benchmarks and `convkit check`)."""
    for dev in DEVICES if device is None else (device,):
        load(dev)
    return [impl for impl in _table.values() if device is None or impl.device == device]


def forget_auto_choices() -> None:
    _auto_algos.clear()
    call_plans.clear()


def _bounded_put(memo: dict, key, value) -> None:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = value


def remember_plan(key, plan) -> None:
    """Keeps a checked call's plan in call_plans. Under autotune too: its choice for a shape
    is measured once and kept; it keys on the ISA as well, which the plans' key does not
    hold, so set_isa forgets the plans (forget_auto_choices)."""
    _bounded_put(call_plans, key, plan)


def lookup(primitive: str, algo: str, device: str, geom=None, dtype=None, layout=None) -> Impl:
    """The implementation to run; algo="auto" asks the chooser (convkit._auto), which
    keys its measurements on the call's geometry, dtype and layout.

    Memoised: a registered algo is one table lookup, and algo="auto" remembers what the
    rules chose for the call's shape and thread count (not what autotune measured: its own
    cache keys on the ISA too). Anything not found that way takes the checked path below."""
    if type(algo) is str and type(device) is str:
        chosen = _auto_algos.get((primitive, device, geom, dtype, layout, get_num_threads())) if algo == "auto" \
            else algo
        impl = _table.get((primitive, chosen, device))
        # a named algorithm that covers only some calls takes the checked path (auto's
        # remembered choice already covers its call)
        if impl is not None and (impl.covers is None or algo == "auto"):
            return impl
    check_device(device)
    valid = algos(primitive, device)
    if not valid:
        raise ValueError(f"{primitive} has no implementation on device={device!r}")
    if not isinstance(algo, str):
        raise ValueError(f"algo must be a string, one of {['auto', *valid]}, got {algo!r}")
    if algo == "auto":
        from . import _auto

        algo = _auto.choose(primitive, geom, device, covering(primitive, device, geom, dtype), dtype, layout).algo
        if not _auto._enabled:
            _bounded_put(_auto_algos, (primitive, device, geom, dtype, layout, get_num_threads()), algo)
    impl = _table.get((primitive, algo, device))
    if impl is None:
        raise ValueError(f"algo={algo!r} is not available for {primitive.split('_backward')[0]} on "
                         f"device={device!r}; valid: {['auto', *valid]}")
    if impl.covers is not None and geom is not None:
        why = impl.covers(geom, dtype)
        if why is not None:
            raise NotCovered(f"algo={algo!r} does not compute this {primitive} call: {why}; "
                             f"valid for it: {['auto', *covering(primitive, device, geom, dtype)]}")
    return impl
