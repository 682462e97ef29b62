"""The reproduction's curves: each quality figure against the mean number of denoiser evaluations, one line
per method, with the 95 % interval of every point as an error bar."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_quality_vs_nfe(rows: list[dict], methods: list[str], panels: list[tuple[str, str]], out: Path) -> None:
    """rows: the report's rows (method, T, mean_nfe, a figure per key, ci95 per key); one panel per (key, title)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for method in methods:
            points = sorted((r for r in rows if r["method"] == method and r[key] is not None),
                            key=lambda r: r["mean_nfe"] or r["T"])
            if not points:
                continue
            x = [r["mean_nfe"] or r["T"] for r in points]
            y = [r[key] for r in points]
            intervals = [(r.get("ci95") or {}).get(key) for r in points]
            err = None
            if all(ci is not None for ci in intervals):
                err = [[max(0.0, v - ci[0]) for v, ci in zip(y, intervals)],
                       [max(0.0, ci[1] - v) for v, ci in zip(y, intervals)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("mean NFE (denoiser evaluations)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
