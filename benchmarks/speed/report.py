"""The speed table, the availability list and the chart."""
from __future__ import annotations

import numpy as np

from benchmarks.cost import format_table

from .backends import BACKENDS, OPS

def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def fmt(value, spec="{:.3g}", none="-"):
    if value is None:
        return none
    if isinstance(value, float) and value >= 1000 and spec == "{:.3g}":
        return f"{value:.0f}"
    return spec.format(value)


TABLE_HEADER = ["model", "op", "B", "sec", "backend", "calls", "median ms", "p90 ms", "RTF", "x real time", "vs eager",
                "floor ms", "x floor", "peak MB", "agree", "status"]


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        mem = r.get("gpu_peak_mb") if BACKENDS[r["backend"]]["device"] == "cuda" else r.get("peak_rss_mb")
        rows.append([r["model"], r["op"], str(r["batch"]), f"{r['seconds']:g}", r["backend"], fmt(r.get("calls"), "{}"),
                     fmt(r.get("median_ms")) if ok else "-", fmt(r.get("p90_ms")) if ok else "-",
                     fmt(r.get("rtf")) if ok else "-", fmt(r.get("x_realtime")) if ok else "-",
                     fmt(r.get("speedup_vs_eager"), "{:.2f}x") if ok else "-",
                     fmt(r.get("floor_ms")), fmt(r.get("x_floor"), "{:.1f}x") if ok else "-",
                     fmt(mem, "{:.0f}") if ok else "-",
                     fmt(r.get("token_agreement"), "{:.2%}") if ok else "-", r["status"]])
    return rows


def render_table(results: list[dict]) -> str:
    return format_table(table_rows(results), TABLE_HEADER, right=set(range(2, 15)) - {4})


def write_png(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if r["status"] == "ok"]
    models = list(dict.fromkeys(r["model"] for r in report["results"])) or ["(none)"]
    ops = list(dict.fromkeys(r["op"] for r in report["results"])) or list(OPS)
    fig, axes = plt.subplots(len(models), len(ops), figsize=(7 * len(ops), 4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            rows = [r for r in results if r["model"] == model and r["op"] == op]
            configs = list(dict.fromkeys((r["batch"], r["seconds"]) for r in rows))
            backends = list(dict.fromkeys(r["backend"] for r in rows))
            width = 0.8 / max(1, len(backends))
            for k, backend in enumerate(backends):
                xs, ys = [], []
                for c, config in enumerate(configs):
                    match = [r for r in rows if r["backend"] == backend and (r["batch"], r["seconds"]) == config]
                    if match:
                        xs.append(c + (k - (len(backends) - 1) / 2) * width)
                        ys.append(match[0]["x_realtime"])
                ax.bar(xs, ys, width=width, label=backend)
            ax.set_xticks(range(len(configs)), [f"B{b} {s:g}s" for b, s in configs])
            ax.set_yscale("log")
            ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
            ax.set_ylabel("x real time (higher is faster)")
            ax.set_title(f"{model}: {op}")
            if backends:
                ax.legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"MelTok speed, {machine.get('gpu') or machine['cpu']}, {report['args']['threads']} CPU threads, "
                 f"mode {report['args']['mode']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def speedups(results: list[dict]) -> None:
    """``speedup_vs_eager`` = median of the device's PyTorch eager fp32 backend / median, same configuration."""
    index = {(r["model"], r["op"], r["batch"], r["seconds"], r["backend"]): r for r in results if r["status"] == "ok"}
    for r in results:
        if r["status"] != "ok":
            continue
        eager = index.get((r["model"], r["op"], r["batch"], r["seconds"], BACKENDS[r["backend"]]["eager"]))
        r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None


def render_availability(report: dict) -> str:
    lines = ["backends:"]
    for label, entries in report["availability"].items():
        for name, reason in entries.items():
            if name == "*":
                lines.append(f"  {label}: {reason}")
            else:
                lines.append(f"  {label} {name}: " + ("available" if reason is None else f"not available: {reason}"))
    return "\n".join(lines)
