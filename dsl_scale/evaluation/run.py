"""launchers/evaluate.py's body: compute the requested metrics and write one results.json (rank 0)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from dsl_scale.core.files import atomic_write_text
from dsl_scale.evaluation import ranks
from dsl_scale.evaluation.config import EvalConfig, validate_eval_config
from dsl_scale.evaluation.inputs import Samples, read_samples, reference_tokens, tokenizer_name
from dsl_scale.tokenizer import get_tokenizer

# Sampler settings lifted to the top of the results file (SPEC §6), when the sidecar has them.
_RUN_KEYS = {"checkpoint": "checkpoint", "sampler": "sampler", "steps": "T", "seed": "seed", "top_p": "top_p",
             "weights": "weights"}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Every metric in `cfg.metrics`; identical on every rank."""
    validate_eval_config(cfg)
    started = time.time()
    ranks.init_world()
    tokenizer = get_tokenizer(tokenizer_name(cfg.samples, cfg.reference))
    results: dict[str, Any] = {"samples": cfg.samples or None, "metrics": list(cfg.metrics),
                               "world_size": ranks.world_size(), "tokenizer": tokenizer.name}
    samples = read_samples(cfg.samples, tokenizer) if cfg.samples else None
    if samples is not None:
        results.update(_run_record(samples))
    if "entropy" in cfg.metrics:
        from dsl_scale.evaluation.diversity import diversity

        results["entropy"] = diversity(samples.tokens)
    if "mauve" in cfg.metrics:
        results["mauve"] = _mauve(cfg, samples, tokenizer)
        results["featurizer"] = results["mauve"]["featurizer"]["name"]
    if "gen_ppl" in cfg.metrics:
        from dsl_scale.evaluation.gen_ppl import generative_perplexity
        from dsl_scale.evaluation.scorers import build_scorer

        scorer = build_scorer(cfg.scorer, cfg.weights)
        _match_scorer_vocabulary(scorer, tokenizer)
        results["gen_ppl"] = generative_perplexity(samples.tokens, tokenizer, scorer, cfg.scorer_batch_size)
        results["scorer"] = cfg.scorer
    if "nelbo" in cfg.metrics:
        from dsl_scale.evaluation.likelihood import validation_bound

        results["nelbo"] = validation_bound(cfg.checkpoint, cfg.reference, cfg.reference_split, cfg.nelbo_examples,
                                            cfg.nelbo_batch_size, cfg.seed, cfg.weights)
        results["checkpoint"] = cfg.checkpoint
    results["config"] = dataclasses.asdict(cfg)
    results["wall_time_s"] = time.time() - started
    return results


def _run_record(samples: Samples) -> dict[str, Any]:
    settings = samples.settings
    record: dict[str, Any] = {"count": len(samples), "checkpoint": None, "sampler": None, "T": None,
                              "seed": None, "mean_nfe": None}
    record.update({ours: settings[theirs] for theirs, ours in _RUN_KEYS.items() if theirs in settings})
    if samples.nfe:
        record["mean_nfe"] = sum(samples.nfe) / len(samples.nfe)
    lengths = [len(t) for t in samples.tokens]
    record["sample_tokens"] = {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)}
    record["sampler_settings"] = settings
    return record


def _match_scorer_vocabulary(scorer, tokenizer) -> None:
    """Our AR scorer must share the samples' tokenizer; a Hugging Face scorer reads our ids as they are only
    for GPT-2 samples (its `same_vocab` probe compares with GPT-2), else it re-tokenises the decoded text."""
    from dsl_scale.evaluation.scorers import CheckpointScorer

    if isinstance(scorer, CheckpointScorer) and scorer.tokenizer.name != tokenizer.name:
        raise ValueError(f"scorer={scorer.path} was trained with tokenizer {scorer.tokenizer.name!r} but the "
                         f"samples use {tokenizer.name!r}; train the AR scorer on the same data")
    if not isinstance(scorer, CheckpointScorer) and tokenizer.name != "gpt2":
        scorer.same_vocab = False


def _mauve(cfg: EvalConfig, samples: Samples, tokenizer) -> dict[str, Any]:
    from dsl_scale.evaluation.features import build_featurizer, featurize
    from dsl_scale.evaluation.inputs import metric_text
    from dsl_scale.evaluation.mauve import mauve_score

    refs = reference_tokens(cfg.reference, cfg.reference_split, [len(t) for t in samples.tokens])
    ref_texts = [metric_text(t, tokenizer) for t in refs]
    featurizer = build_featurizer(cfg.featurizer, cfg.featurizer_path, cfg.feature_batch_size)
    started = time.time()
    p, p_info = featurize(samples.texts, featurizer, cfg.cache_dir)
    q, q_info = featurize(ref_texts, featurizer, cfg.cache_dir)
    featurize_s = time.time() - started
    score = mauve_score(p, q)
    return {**score, "featurizer": featurizer.identity(), "feature_dim": int(p.shape[1]),
            "features": {"samples": p_info, "references": q_info, "seconds": featurize_s},
            "reference": {"path": cfg.reference, "split": cfg.reference_split, "count": len(refs),
                          "selection": "evenly spaced blocks, each cut to its sample's token length",
                          "same_token_lengths": [len(r) for r in refs] == [len(t) for t in samples.tokens]}}


def write_results(results: dict[str, Any], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2, default=str))


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    from dsl_scale.parallel.topology import set_cpu_threads

    set_cpu_threads()
    results = evaluate(cfg)
    if ranks.rank() == 0:
        write_results(results, cfg.out)
        print(f"[dsl_scale] wrote {cfg.out}: " + _summary(results))
    return results


def _summary(results: dict[str, Any]) -> str:
    parts = []
    for key, field in (("mauve", "mauve"), ("gen_ppl", "gen_ppl"), ("entropy", "entropy"), ("nelbo", "nelbo")):
        if key in results:
            parts.append(f"{key} {results[key][field]:.4f}")
    return ", ".join(parts) + f" ({results['wall_time_s']:.1f} s)"
