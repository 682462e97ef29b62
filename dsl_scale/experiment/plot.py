"""The reproduction's curves: each quality figure against the mean number of denoiser evaluations, one line
per method, with the 95 % interval of every point as an error bar and the sanity rows (held-out real, shuffled
real) as horizontal reference lines. One PNG per metric (quality_vs_nfe_KEY.png, readable at page width) and
all of them in a two-column grid (quality_vs_nfe.png); a per-metric figure has the MDLM arms' rows and the DSL
arms' rows in two panels with one y axis, for the first fine-tune seed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REFERENCES = (("real", "held-out real", "k", "--"), ("shuffled", "shuffled real", "0.5", ":"))


def _panel(ax, rows: list[dict], methods: list[str], key: str, title: str) -> None:
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 lines, each its own colour
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
    for name, label, color, style in REFERENCES:
        value = next(((r.get("sanity_rows") or {}).get(key, {}).get(name, {}).get("value") for r in rows
                      if ((r.get("sanity_rows") or {}).get(key, {}).get(name) or {}).get("value") is not None), None)
        if value is not None:
            ax.axhline(value, color=color, linestyle=style, linewidth=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean NFE (denoiser evaluations)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)


def plot_quality_vs_nfe(rows: list[dict], methods: list[str], panels: list[tuple[str, str]], out: Path) -> None:
    """rows: the report's rows (method, T, mean_nfe, a figure per key, ci95 per key, sanity_rows); one panel per
    (key, title), in `out` and, one per file, beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(7.0 * cols, 4.8 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        _panel(ax, rows, methods, key, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    for key, title in panels:
        fig, axes = plt.subplots(1, 2, figsize=(13.0, 7.0), sharex=True, sharey=True, squeeze=False)
        for ax, (group, members) in zip(axes.flat, method_groups(methods)):
            _panel(ax, rows, members, key, group)
            ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below: off the data
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out.with_name(f"{out.stem}_{key}{out.suffix}"), dpi=110)
        plt.close(fig)


def method_groups(methods: list[str]) -> list[tuple[str, list[str]]]:
    """The per-metric figures' two panels: the MDLM arms' rows (and AR) beside the DSL arms' and the control's,
    for the first fine-tune seed only (labels with "[ft k]" are the other seeds': in the tables), so that each
    panel has few enough lines to read."""
    first = [m for m in methods if "[ft " not in m]
    dsl = [m for m in first if m.startswith(("DSL", "Control"))]
    seeds = " (first fine-tune seed)" if len(first) < len(methods) else ""
    return [(f"MDLM arms and AR{seeds}", [m for m in first if m not in dsl]),
            (f"DSL arms and the control{seeds}", dsl)]
