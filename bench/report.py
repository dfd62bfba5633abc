"""A run's results as a table (stdout), JSON, Markdown and a bar chart (matplotlib).

Every format carries the same rows; a result that does not match the reference is
marked in each of them, and the text formats end with a banner listing the failures.
"""
from __future__ import annotations

import json
import math

COLUMNS = ("layer", "dir", "impl", "time", "speed", "x ref", "x torch", "% peak", "memory", "check")


def _seconds(s) -> str:
    if s is None:
        return "-"
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _bytes(n) -> str:
    if n is None:
        return "-"
    for scale, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.3g}x"


def _check(row, width=None) -> str:
    text = row.check if not row.detail else f"{row.check}: {row.detail}"
    if row.failed:
        text = "!! " + text
    return text if width is None or len(text) <= width else text[:width - 3] + "..."


def _columns(report) -> list:
    """Column indices to show: "x torch" only when PyTorch took part."""
    return [i for i, c in enumerate(COLUMNS) if c != "x torch" or report.machine["torch"]]


def cells(row, check_width=None) -> list:
    return [row.layer, row.direction, row.impl, _seconds(row.seconds),
            "-" if row.rate is None else f"{row.rate:.3g} {row.unit}", _ratio(row.vs_reference),
            _ratio(row.vs_torch), "-" if row.peak_share is None else f"{100 * row.peak_share:.3g}%",
            _bytes(row.memory.peak if row.memory else None), _check(row, check_width)]


def _header(report) -> list:
    m = report.machine
    threads = ", ".join(f"{k} {v}" for k, v in m["threads"].items())
    lines = [f"convkit {m['convkit']} bench: {m['cpu']}, isa {m['isa']}, numpy {m['numpy']}"
             + (f", torch {m['torch']}" if m["torch"] else ""),
             f"threads: {threads}"]
    lines += [f"{k}: {v}" for k, v in m.items() if k.startswith("peak")]
    return lines


def _failure_banner(report) -> list:
    failures = report.failures
    if not failures:
        return []
    lines = [f"!!! {len(failures)} result(s) FAILED the check against the reference:"]
    lines += [f"!!!   {r.layer} {r.direction} {r.impl}: {r.check}: {r.detail}" for r in failures]
    return lines


def table(report) -> str:
    """The plain-text table printed on stdout."""
    keep = _columns(report)
    body = [[line[i] for i in keep] for line in [list(COLUMNS)] + [cells(r, check_width=60) for r in report.rows]]
    widths = [max(len(line[i]) for line in body) for i in range(len(keep))]
    numeric = {3, 4, 5, 6, 7, 8}  # right-aligned: time, speed, ratios, % peak, memory
    fmt = [lambda s, w=w, i=i: s.rjust(w) if i in numeric else s.ljust(w) for i, w in zip(keep, widths)]
    out = _header(report) + [""]
    for n, line in enumerate(body):
        out.append("  ".join(f(c) for f, c in zip(fmt, line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out += [""] + [f"* {note}" for note in report.notes] + _failure_banner(report)
    return "\n".join(out)


def row_dict(row) -> dict:
    mem = row.memory
    return {"layer": row.layer, "op": row.op, "direction": row.direction, "impl": row.impl,
            "seconds": row.seconds, "blocks": row.blocks, "calls_per_block": row.calls_per_block,
            "work": row.work, "rate": row.rate, "unit": row.unit, "vs_reference": row.vs_reference,
            "vs_torch": row.vs_torch, "peak_share": row.peak_share,
            "memory_bytes": mem.peak if mem else None, "memory_traced_bytes": mem.traced if mem else None,
            "memory_rss_bytes": mem.rss if mem else None, "output_bytes": mem.output if mem else None,
            "check": row.check, "error_in_tolerances": row.error, "detail": row.detail}


def to_json(report) -> str:
    return json.dumps({"machine": report.machine, "settings": report.settings,
                       "results": [row_dict(r) for r in report.rows], "notes": report.notes,
                       "failures": len(report.failures)}, indent=2)


def to_markdown(report) -> str:
    def md_row(items):
        return "| " + " | ".join(str(i).replace("|", "\\|") for i in items) + " |"

    out = ["# convkit bench", ""] + [f"- {line}" for line in _header(report)] + [""]
    keep = _columns(report)
    out += [md_row([COLUMNS[i] for i in keep]), md_row(["---"] * len(keep))]
    out += [md_row([c[i] for i in keep]) for c in (cells(r) for r in report.rows)]
    out += [""] + [f"- {note}" for note in report.notes]
    banner = _failure_banner(report)
    if banner:
        out += ["", "**" + banner[0] + "**", ""] + [f"- {line[4:].strip()}" for line in banner[1:]]
    return "\n".join(out) + "\n"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install 'convkit[plot]')") from None


def plot(report, path) -> None:
    """One panel per layer: implementations side by side per direction, speed on a log
    axis (the reference and the fastest kernels differ by orders of magnitude), the
    machine's peak as a dashed line; a bar that failed the check is red and hatched."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    layers = list(dict.fromkeys(r.layer for r in report.rows))
    impls = list(dict.fromkeys(r.impl for r in report.rows))
    peaks = {"GFLOP/s": report.machine["peak GFLOP/s (float32 matmul, NumPy BLAS)"],
             "GB/s": report.machine["peak GB/s (copy, read + write)"]}
    ncols = min(4, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    width = 0.8 / len(impls)
    for ax, layer in zip(axes, layers):
        rows = [r for r in report.rows if r.layer == layer]
        directions = list(dict.fromkeys(r.direction for r in rows))
        unit = rows[0].unit
        for r in rows:
            if r.rate is None:
                continue
            x = directions.index(r.direction) + (impls.index(r.impl) - (len(impls) - 1) / 2) * width
            ax.bar(x, r.rate, width, color="red" if r.failed else colors[r.impl],
                   hatch="xx" if r.failed else None)
        ax.axhline(peaks[unit], color="black", linestyle="--", linewidth=1)
        ax.text(len(directions) - 0.5, peaks[unit], " peak", va="bottom", ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(directions)), directions)
        ax.set_title(layer, fontsize=9)
        ax.set_ylabel(unit)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    handles = [Patch(color=colors[i], label=i) for i in impls]
    if report.failures:
        handles.append(Patch(facecolor="red", hatch="xx", label="failed the check"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle(f"convkit {report.machine['convkit']}: speed per layer (log scale), dashed line = machine peak")
    fig.savefig(path, dpi=110)


def write(text: str, path) -> None:
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
