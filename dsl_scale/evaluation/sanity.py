"""Sanity rows: every metric is also computed for held-out real text (validation blocks other than the
references, cut to the samples' lengths) and for that text with its tokens shuffled within each sequence
(the BOS/EOS frame kept). A metric whose real row does not clearly beat its shuffled row cannot tell good
samples from bad, so its figures are not reported (experiment/report.py prints "sanity failed").

The rules (`check`), per metric:
- mauve: real ≥ 0.5 (two draws of one distribution score near 1; below ½ the featurizer or the quantisation
  cannot recognise real text as real) and real's 95 % interval above shuffled's (point values without
  intervals);
- frechet: real's interval below shuffled's (no absolute threshold: the scale depends on the features);
- hmm_nll: real's interval below shuffled's, and real ≤ the source's entropy upper bound + 0.1 nats (the
  source's own text must score its entropy rate);
- gen_ppl (either AR scorer), kn_ppl: real below shuffled;
- eps_nll: real's interval below shuffled's; hmm_tv: real's bigram-TV interval below shuffled's.
"""

from __future__ import annotations

from typing import Any

import torch

SANITY_METRICS = ("mauve", "frechet", "hmm_nll", "gen_ppl", "gen_ppl_2", "kn_ppl", "eps_nll", "hmm_tv")
MAUVE_FLOOR = 0.5
HMM_SLACK_NATS = 0.1


def sanity_indices(available: int, count: int) -> list[int]:
    """Blocks halfway between the references' evenly spaced picks (inputs.reference_indices): disjoint
    from them when the split holds at least 2·count blocks."""
    if available < 2 * count:
        raise ValueError(f"sanity rows need {2 * count} reference blocks ({count} references + {count} held-out "
                         f"real texts), the split has {available}; evaluate fewer samples or pass sanity=false")
    return [i * available // count + available // (2 * count) for i in range(count)]


def sanity_tokens(shard_dir: str, split: str, lengths: list[int], seed: int) -> dict[str, list[list[int]]]:
    """{"real": held-out blocks cut to `lengths`, "shuffled": the same with the inner tokens permuted}."""
    import numpy as np

    from dsl_scale.data.loader import open_shards

    blocks = open_shards(shard_dir, split)
    picked = sanity_indices(len(blocks), len(lengths))
    real = [np.asarray(blocks[i][:n]).tolist() for i, n in zip(picked, lengths)]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shuffled = []
    for tokens in real:
        order = torch.randperm(max(0, len(tokens) - 2), generator=generator, device="cpu").tolist()
        inner = tokens[1:-1]
        shuffled.append(tokens[:1] + [inner[k] for k in order] + tokens[-1:] if len(tokens) > 2 else list(tokens))
    return {"real": real, "shuffled": shuffled}


def _interval(entry: dict[str, Any], key: str) -> tuple[float, float]:
    ci = entry.get("ci95")
    return (ci[0], ci[1]) if ci else (entry[key], entry[key])


def check(metric: str, real: dict[str, Any], shuffled: dict[str, Any]) -> dict[str, Any]:
    """Whether `metric`'s real row separates from its shuffled row (the module doc's rule)."""
    if metric == "mauve":
        (real_low, _), (_, shuffled_high) = _interval(real, "mauve"), _interval(shuffled, "mauve")
        passed = real["mauve"] >= MAUVE_FLOOR and real_low > shuffled_high
        rule = f"real >= {MAUVE_FLOOR} and real's 95% interval above shuffled's"
    elif metric == "frechet":
        passed = _interval(real, "frechet")[1] < _interval(shuffled, "frechet")[0]
        rule = "real's 95% interval below shuffled's"
    elif metric == "hmm_nll":
        upper = real["source_entropy_bounds"]["upper"]
        passed = (_interval(real, "nll_per_token")[1] < _interval(shuffled, "nll_per_token")[0]
                  and real["nll_per_token"] <= upper + HMM_SLACK_NATS)
        rule = f"real's 95% interval below shuffled's and real <= source entropy upper bound + {HMM_SLACK_NATS}"
    elif metric in ("gen_ppl", "gen_ppl_2", "kn_ppl"):
        passed = real["gen_ppl"] < shuffled["gen_ppl"]
        rule = "real below shuffled"
    elif metric == "eps_nll":
        passed = _interval(real, "eps_nll")[1] < _interval(shuffled, "eps_nll")[0]
        rule = "real's 95% interval below shuffled's"
    elif metric == "hmm_tv":
        passed = _interval(real["tv_2"], "tv")[1] < _interval(shuffled["tv_2"], "tv")[0]
        rule = "real's bigram TV interval below shuffled's (real's value is the finite-sample floor)"
    else:
        raise ValueError(f"no sanity rule for metric {metric!r} (have {SANITY_METRICS})")
    return {"passed": bool(passed), "rule": rule}


def summarise(rows: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """rows: {"real": {metric: result}, "shuffled": {metric: result}} → the sanity record of a results file."""
    checks = {m: check(m, rows["real"][m], rows["shuffled"][m]) for m in SANITY_METRICS
              if m in rows["real"] and m in rows["shuffled"]}
    return {**rows, "checks": checks, "passed": all(c["passed"] for c in checks.values())}
