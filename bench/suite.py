"""The layer suite: load a suite file, check every layer, pick the layers a run wants.

A suite file is JSON: ``{"layers": [{"name": ..., "op": ..., <fields>}, ...]}`` (the
default, suite.json beside this file, holds real layers of well-known CNNs). Every layer
is checked when the file is loaded, with convkit's own argument checks, so a bad file is
one ValueError that names the layer and the field, never a crash half-way through a run.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from convkit import _args

# Per op: the fields a layer must give, and the optional ones with their defaults
# (torch.nn.functional's). A pool's stride None means "the kernel size", as in torch.
_SHAPE = ("N", "C", "H", "W")
_CONV_OPTIONAL = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
OP_FIELDS = {
    "conv2d": (_SHAPE + ("K", "kernel"), _CONV_OPTIONAL),
    "conv_transpose2d": (_SHAPE + ("K", "kernel"), {**_CONV_OPTIONAL, "output_padding": 0}),
    "max_pool2d": (_SHAPE + ("kernel",), {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}),
    "avg_pool2d": (_SHAPE + ("kernel",), {"stride": None, "padding": 0, "ceil_mode": False,
                                          "count_include_pad": True}),
    "global_avg_pool2d": (_SHAPE, {}),
}
_DESCRIPTIVE = ("name", "op", "from")
_PAIR_FIELDS = {"kernel": 1, "stride": 1, "dilation": 1, "padding": 0, "output_padding": 0}  # field -> minimum
_BOOL_FIELDS = ("ceil_mode", "count_include_pad")

# --quick: one layer of each kind the kernels treat differently (few channels, dense 3x3,
# pointwise, depthwise, transposed with output_padding, max and global pooling), each
# small enough that the NumPy reference stays a few calls of under a second.
QUICK_LAYERS = ("lenet5_c1_5x5", "resnet_3x3_64", "resnet_1x1_256_64", "mobilenet_dw3x3_144",
                "fcn_convT3x3_s2_op1", "resnet_maxpool3x3_s2", "resnet_global_avg")


@dataclass(frozen=True)
class Layer:
    """One checked suite layer: its shape (NCHW) and op parameters with defaults filled in."""

    name: str
    op: str
    source: str
    N: int
    C: int
    H: int
    W: int
    K: int | None = None
    params: dict = field(default_factory=dict)

    @property
    def is_pool(self) -> bool:
        return self.op.endswith("pool2d")


def default_suite_path():
    return resources.files("convkit.bench").joinpath("suite.json")


def load_suite(path=None) -> list:
    """The layers of a suite file (the packaged default when path is None), all checked."""
    where = f"suite {path}" if path is not None else "default suite"
    source = Path(path) if path is not None else default_suite_path()
    try:
        text = source.read_text()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    return parse_suite(data, where)


def parse_suite(data, where: str = "suite") -> list:
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list) or not data["layers"]:
        raise ValueError(f'{where}: must be a JSON object with a non-empty list "layers"')
    layers, seen = [], set()
    for i, raw in enumerate(data["layers"]):
        layer = _parse_layer(raw, f"{where}: layer #{i}")
        if layer.name in seen:
            raise ValueError(f"{where}: layer #{i}: name {layer.name!r} is used twice")
        seen.add(layer.name)
        layers.append(layer)
    return layers


def _parse_layer(raw, where: str) -> Layer:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a JSON object, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: field 'name' must be a non-empty string, got {name!r}")
    where = f"{where} ({name!r})"
    op = raw.get("op")
    if op not in OP_FIELDS:
        raise ValueError(f"{where}: field 'op' must be one of {sorted(OP_FIELDS)}, got {op!r}")
    required, optional = OP_FIELDS[op]
    missing = [f for f in required if f not in raw]
    if missing:
        raise ValueError(f"{where}: {op} needs field(s) {missing}")
    unknown = sorted(set(raw) - set(required) - set(optional) - set(_DESCRIPTIVE))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for op {op}; "
                         f"known: {sorted(set(required) | set(optional))}")
    values = {**optional, **{k: raw[k] for k in raw if k not in _DESCRIPTIVE}}
    for key, value in values.items():
        values[key] = _check_field(key, value, where)
    shape = {k: values.pop(k) for k in _SHAPE + ("K",) if k in values}
    layer = Layer(name=name, op=op, source=str(raw.get("from", "")), params=values, **shape)
    _check_geometry(layer, where)
    return layer


def _check_field(key, value, where):
    def bad(what):
        return ValueError(f"{where}: field {key!r} must be {what}, got {value!r}")

    if key in _SHAPE or key in ("K", "groups"):
        if not _is_int(value) or value < 1:
            raise bad("a positive int")
        return int(value)
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "stride" and value is None:
        return None
    minimum = _PAIR_FIELDS[key]
    if _is_int(value):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)):
        raise bad("an int or a pair of ints")
    if min(value) < minimum:
        raise bad(f"at least {minimum}")
    return (int(value[0]), int(value[1]))


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_geometry(layer: Layer, where: str) -> None:
    """convkit's own argument checks, so every layer the runner sees is one convkit accepts."""
    p = layer.params
    x_shape = (layer.N, layer.C, layer.H, layer.W)
    try:
        if layer.op == "conv2d":
            _args.conv_geometry(x_shape, (layer.K, layer.C // p["groups"], *p["kernel"]), p["stride"],
                                p["padding"], p["dilation"], p["groups"])
        elif layer.op == "conv_transpose2d":
            if layer.K % p["groups"]:
                raise ValueError(f"groups={p['groups']} must divide K={layer.K}")
            _args.conv_transpose_geometry(x_shape, (layer.C, layer.K // p["groups"], *p["kernel"]), p["stride"],
                                          p["padding"], p["output_padding"], p["groups"], p["dilation"])
        elif layer.op in ("max_pool2d", "avg_pool2d"):
            _args.pool_geometry(x_shape, p["kernel"], p["stride"], p["padding"], p.get("dilation", 1),
                                p["ceil_mode"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def select(layers: list, names=None, quick: bool = False) -> list:
    """The layers named (in suite order), or the --quick set, or all of them.

    --quick on a suite that holds none of QUICK_LAYERS takes the first layer of each op.
    """
    if names:
        known = {layer.name for layer in layers}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"--layers: no layer named {unknown} in the suite; it has {sorted(known)}")
        return [layer for layer in layers if layer.name in names]
    if quick:
        chosen = [layer for layer in layers if layer.name in QUICK_LAYERS]
        if not chosen:
            firsts = {}
            for layer in layers:
                firsts.setdefault(layer.op, layer)
            chosen = [layer for layer in layers if firsts[layer.op] is layer]
        return chosen
    return list(layers)
