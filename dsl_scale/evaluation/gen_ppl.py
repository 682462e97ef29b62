"""Generative perplexity (docs/method.md §6): samples re-tokenised for the scorer when vocabularies differ, cut
after their first EOS, scored in chunks of the scorer's context, exp(mean NLL over scored tokens). The
scorer's model runs on its `device` (the compute device for ours and Hugging Face ones, scorers.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dsl_scale.core.device import CPU
from dsl_scale.evaluation import ranks
from dsl_scale.evaluation.bootstrap import percentile_interval
from dsl_scale.evaluation.scorers import Scorer
from dsl_scale.tokenizer import Tokenizer


def cut_at_first_eos(tokens: list[int], eos_id: int, bos_id: int) -> tuple[list[int], bool]:
    """Leading BOS ids are the block's framing, not an end of text: drop them, then keep everything up to
    and including the first EOS. Returns (tokens, whether an EOS was found)."""
    start = 0
    while start < len(tokens) and tokens[start] == bos_id:
        start += 1
    body = tokens[start:]
    if eos_id in body:
        return body[: body.index(eos_id) + 1], True
    return body, False


def scorer_ids(tokens: list[int], tokenizer: Tokenizer, scorer: Scorer) -> list[int]:
    """One sample as the ids the scorer predicts (its BOS not included)."""
    body, ended = cut_at_first_eos(tokens, tokenizer.eos_id, tokenizer.bos_id)
    if scorer.same_vocab:
        return body
    text = tokenizer.decode(body[:-1] if ended else body)
    return scorer.encode(text) + ([scorer.eos_id] if ended else [])


def chunks(ids: list[int], context: int, bos_id: int) -> list[list[int]]:
    """[BOS] + up to context − 1 ids per chunk; every id of `ids` is predicted exactly once."""
    step = context - 1
    return [[bos_id, *ids[i:i + step]] for i in range(0, len(ids), step)]


@torch.inference_mode()
def chunk_nll(scorer: Scorer, batch: list[list[int]]) -> tuple[list[float], list[int]]:
    """Per chunk: the summed NLL of every id after its BOS, and how many ids that was. The right-padded
    batch is built on the host and sent to the scorer's device in one copy; only the sums come back."""
    device = getattr(scorer, "device", CPU)
    width = max(len(c) for c in batch)
    ids = torch.tensor([c + [0] * (width - len(c)) for c in batch], dtype=torch.long, device=device)
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in batch], dtype=torch.long, device=device)
    logits = scorer.logits(ids, mask)[:, :-1].float()
    ids, mask = ids.to(logits.device), mask.to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    scored = mask[:, 1:].bool()
    sums = (nll.double() * scored).sum(dim=1).cpu()
    return sums.tolist(), scored.sum(dim=1).cpu().tolist()


def sample_nll(samples: list[list[int]], tokenizer: Tokenizer, scorer: Scorer,
               batch_size: int) -> tuple[list[float], list[int]]:
    """Each sample's summed NLL and scored-token count (this rank's slice of the samples scored, all
    gathered, in sample order)."""
    owner, mine = [], []
    for i in ranks.my_slice(len(samples)):
        for chunk in chunks(scorer_ids(samples[i], tokenizer, scorer), scorer.context, scorer.bos_id):
            owner.append(i)
            mine.append(chunk)
    sums: dict[int, tuple[float, int]] = {}
    for start in range(0, len(mine), batch_size):
        nll, n = chunk_nll(scorer, mine[start:start + batch_size])
        for i, a, b in zip(owner[start:start + batch_size], nll, n):
            total, count = sums.get(i, (0.0, 0))
            sums[i] = (total + a, count + b)
    merged = {i: v for part in ranks.gather(sums) for i, v in part.items()}
    pairs = [merged.get(i, (0.0, 0)) for i in range(len(samples))]  # (0, 0): nothing left after the cut
    return [p[0] for p in pairs], [p[1] for p in pairs]


def generative_perplexity(samples: list[list[int]], tokenizer: Tokenizer, scorer: Scorer,
                          batch_size: int = 8, resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """Token-weighted mean NLL over all samples; each rank scores its slice of the samples. With
    `resamples`, a bootstrap 95 % interval of the perplexity: samples (not tokens) are resampled, since
    a sample's tokens are not independent, and each resample's perplexity is exp(Σ NLL / Σ tokens)."""
    nll, count = sample_nll(samples, tokenizer, scorer, batch_size)
    nll, count = np.asarray(nll, dtype=np.float64), np.asarray(count, dtype=np.int64)
    if count.sum() == 0:
        raise ValueError("no tokens to score: every sample is empty after cutting at its first EOS")
    mean = float(nll.sum() / count.sum())
    result = {"gen_ppl": math.exp(mean), "mean_nll": mean, "scored_tokens": int(count.sum()),
              "count": len(samples), "scorer": scorer.identity(), "ci95": None}
    if resamples > 0:
        picks = np.random.default_rng(seed).integers(0, len(samples), size=(resamples, len(samples)))
        tokens = np.maximum(count[picks].sum(axis=1), 1)  # a resample of empty samples only: NLL 0
        result["ci95"] = percentile_interval(np.exp(nll[picks].sum(axis=1) / tokens))
        result["bootstrap"] = {"resamples": resamples, "seed": seed, "unit": "sample",
                               "interval": "percentile"}
    return result
