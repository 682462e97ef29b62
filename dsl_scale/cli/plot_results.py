"""MAUVE (and generative perplexity, when present) against mean NFE for a set of results files.

    python tools/plot_results.py results_T64.json results_T128.json ... --out plot.png   (or dsl-plot-results ...)
One line per (checkpoint, sampler); the x axis is the mean number of denoiser evaluations.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files from launchers/evaluate.py")
    parser.add_argument("--out", default="plot.png")
    args = parser.parse_args(argv)
    from dsl_scale.evaluation.plot import load_points, plot

    plot(load_points(args.results), args.out)
    print(f"wrote {args.out}")

