"""Latency chart for bench reports: one panel per batch size, median bars with p90 whiskers."""

from __future__ import annotations

import os
from pathlib import Path

from ..artifacts.files import atomic_path
from ..errors import MissingDependencyError
from .bench import LatencyReport, format_ratio

BACKEND_COLORS = {"torch-cpu": "#4C72B0", "ort-cpu": "#DD8452", "torch-cuda": "#55A868", "ort-cuda": "#C44E52",
                  "trt": "#937860"}


def plot_latency(report: LatencyReport, path: str | os.PathLike, title: str | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib (pip install matplotlib)") from None
    path = Path(path)
    batches = sorted({r.batch for r in report.results})
    labels = list(dict.fromkeys(r.label for r in report.results))
    fig, axes = plt.subplots(len(batches), 1, figsize=(10, 1.2 + 0.45 * len(labels) * len(batches) + 0.6),
                             squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        rows = [r for r in report.results if r.batch == batch]
        names = [r.label for r in rows]
        medians = [r.stats.median * 1e3 for r in rows]
        whiskers = [[0.0] * len(rows), [(r.stats.p90 - r.stats.median) * 1e3 for r in rows]]
        colors = [BACKEND_COLORS.get(r.backend, "#8172B3") for r in rows]
        y = range(len(rows))
        ax.barh(y, medians, xerr=whiskers, color=colors, capsize=4, error_kw={"elinewidth": 1})
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel("latency per batch, ms (bar: median, whisker: p90)")
        ax.set_title(f"batch {batch}", loc="left", fontsize=10)
        right = max(r.stats.p90 for r in rows) * 1e3
        for i, r in enumerate(rows):
            text = f"{r.stats.median * 1e3:.2f} ms · {r.throughput:.0f}/s"
            if r.ratio is not None:
                text += f" · ×{format_ratio(r)}"
            ax.text(r.stats.p90 * 1e3 + right * 0.02, i, text, va="center", fontsize=8)
        ax.set_xlim(0, right * 1.9)
        present = list(dict.fromkeys(r.backend for r in rows))
        handles = [plt.Rectangle((0, 0), 1, 1, color=BACKEND_COLORS.get(b, "#8172B3")) for b in present]
        ax.legend(handles, present, loc="lower right", fontsize=8, frameon=False)
    cpu = report.environment["cpu"]
    fig.suptitle(title or f"deploy bench — {cpu['model']}, {report.environment['threads']} threads", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_debug(report, path: str | os.PathLike) -> Path:
    """Error against depth for `deploy debug`: SQNR of every aligned tensor, accumulated and local."""
    import math

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib (pip install matplotlib)") from None
    path = Path(path)
    layers = report.layers
    finite = [v for e in layers for v in (e.accumulated.sqnr_db, e.local.sqnr_db) if math.isfinite(v)]
    top = (max(finite) if finite else 100.0) + 10.0  # exact tensors (infinite SQNR) drawn on a ceiling line

    def clip(v: float) -> float:
        return top if v == math.inf else (min(finite, default=0.0) - 10.0 if v == -math.inf else v)

    x = list(range(len(layers)))
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.plot(x, [clip(e.accumulated.sqnr_db) for e in layers], "-o", ms=3, label="accumulated (same inputs)",
            color="#C44E52")
    ax.plot(x, [clip(e.local.sqnr_db) for e in layers], "-s", ms=3, label="local (fed the reference's inputs)",
            color="#4C72B0")
    first = report.first
    if first is not None:
        i = layers.index(first)
        ax.axvline(i, color="#937860", ls="--", lw=1)
        ax.annotate(f"first divergence: {first.node}", (i, clip(first.accumulated.sqnr_db)), fontsize=8,
                    xytext=(6, 12), textcoords="offset points")
    ax.set_xlabel("aligned tensor, in the candidate's topological order")
    ax.set_ylabel("SQNR vs reference, dB (top line: exact)")
    ax.set_title(f"deploy debug — {report.candidate} vs {report.reference} ({report.precision}, {report.samples} "
                 f"samples)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
