"""MAUVE (and generative perplexity, when present) against mean NFE for a set of results.json files
(tools/plot_results.py is the command line; the reproduction's report draws its plot with it too).
One line per (checkpoint, sampler); the x axis is the mean number of denoiser evaluations.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_points(files: list[str]) -> dict[str, list[dict]]:
    """label → points {nfe, mauve, gen_ppl} sorted by NFE; files without NFE are refused."""
    lines: dict[str, list[dict]] = defaultdict(list)
    for file in files:
        r = json.loads(Path(file).read_text())
        nfe = r.get("mean_nfe") if r.get("mean_nfe") is not None else r.get("T")
        if nfe is None:
            raise ValueError(f"{file} records neither mean_nfe nor T: nothing to put on the x axis")
        sampler = r.get("sampler") or "?"
        sampler = sampler.get("name", "?") if isinstance(sampler, dict) else sampler  # a sampler config
        label = f"{Path(str(r.get('checkpoint') or '?')).name} · {sampler}"
        lines[label].append({"nfe": float(nfe), "mauve": (r.get("mauve") or {}).get("mauve"),
                             "gen_ppl": (r.get("gen_ppl") or {}).get("gen_ppl"), "file": file})
    return {k: sorted(v, key=lambda p: p["nfe"]) for k, v in lines.items()}


def plot(lines: dict[str, list[dict]], out: str) -> None:
    panels = [m for m in ("mauve", "gen_ppl") if any(p[m] is not None for v in lines.values() for p in v)]
    if not panels:
        raise ValueError("no results file holds a MAUVE or gen-PPL figure")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        for label, points in lines.items():
            pts = [p for p in points if p[metric] is not None]
            ax.plot([p["nfe"] for p in pts], [p[metric] for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("mean NFE (denoiser evaluations)")
        ax.set_ylabel({"mauve": "MAUVE", "gen_ppl": "generative perplexity"}[metric])
        if metric == "gen_ppl":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)

