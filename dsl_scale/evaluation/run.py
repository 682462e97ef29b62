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

# Sampler settings lifted to the top of the results file (docs/method.md §6), when the sidecar has them.
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
    # Sanity rows (evaluation/sanity.py): held-out real text and shuffled real text, scored like the samples.
    sanity, sanity_skipped = _sanity_sets(cfg, samples)
    rows: dict[str, dict[str, Any]] = {name: {} for name in sanity}
    if "entropy" in cfg.metrics:
        from dsl_scale.evaluation.diversity import diversity

        results["entropy"] = diversity(samples.tokens, cfg.bootstrap_resamples, cfg.seed)
        for name, tokens in sanity.items():  # the real-data reference of distinct-n
            rows[name]["entropy"] = diversity(tokens, cfg.bootstrap_resamples, cfg.seed)
    if {"mauve", "frechet"} & set(cfg.metrics):
        features = _feature_metrics(cfg, samples, tokenizer, sanity)
        for name, metrics in features.items():
            (results if name == "samples" else rows[name]).update(metrics)
        results["featurizer"] = next(iter(features["samples"].values()))["featurizer"]["name"]
    if "gen_ppl" in cfg.metrics:
        from dsl_scale.evaluation.gen_ppl import generative_perplexity
        from dsl_scale.evaluation.scorers import build_scorer

        scorer = build_scorer(cfg.scorer, cfg.weights)
        _match_scorer_vocabulary(scorer, tokenizer)

        def scored(tokens: list[list[int]]) -> dict[str, Any]:
            return generative_perplexity(tokens, tokenizer, scorer, cfg.scorer_batch_size, cfg.bootstrap_resamples,
                                         cfg.seed)

        results["gen_ppl"] = scored(samples.tokens)
        results["scorer"] = cfg.scorer
        for name, tokens in sanity.items():
            rows[name]["gen_ppl"] = scored(tokens)
        if cfg.scorer2:
            scorer = build_scorer(cfg.scorer2, cfg.weights)
            _match_scorer_vocabulary(scorer, tokenizer)
            results["gen_ppl_2"] = scored(samples.tokens)
            results["scorer2"] = cfg.scorer2
            for name, tokens in sanity.items():
                rows[name]["gen_ppl_2"] = scored(tokens)
    if "kn_ppl" in cfg.metrics:
        from dsl_scale.evaluation.gen_ppl import generative_perplexity
        from dsl_scale.evaluation.kneser_ney import KneserNeyScorer, fit_on_split
        from dsl_scale.evaluation.ranks import world_size

        if world_size() > 1:
            raise ValueError("metrics=[kn_ppl] runs on one rank (the n-gram scorer is host code)")
        model = fit_on_split(cfg.reference, cfg.kn_split, cfg.kn_order, tokenizer, cfg.cache_dir)
        kn = KneserNeyScorer(model, tokenizer, _reference_seq_len(cfg.reference), f"{cfg.reference}:{cfg.kn_split}")
        for name, tokens in {"samples": samples.tokens, **sanity}.items():
            scored_kn = generative_perplexity(tokens, tokenizer, kn, cfg.scorer_batch_size, cfg.bootstrap_resamples,
                                              cfg.seed)
            (results if name == "samples" else rows[name])["kn_ppl"] = scored_kn
    if "hmm_nll" in cfg.metrics:
        from dsl_scale.evaluation.hmm_likelihood import hmm_quality

        source = _hmm_source(cfg)
        for name, tokens in {"samples": samples.tokens, **sanity}.items():
            scored = hmm_quality(source, tokens, tokenizer.bos_id, tokenizer.eos_id, cfg.bootstrap_resamples, cfg.seed)
            (results if name == "samples" else rows[name])["hmm_nll"] = scored
    if {"eps_nll", "hmm_tv"} & set(cfg.metrics):
        from dsl_scale.data.synthetic_hmm import hmm_from_source
        from dsl_scale.evaluation.hmm_marginals import eps_nll, in_sampler_self_correction, ngram_tv

        hmm = hmm_from_source(_hmm_source(cfg))
        for name, tokens in {"samples": samples.tokens, **sanity}.items():
            target = results if name == "samples" else rows[name]
            if "eps_nll" in cfg.metrics:
                target["eps_nll"] = eps_nll(hmm, tokens, tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size,
                                            cfg.hmm_eps, cfg.bootstrap_resamples, cfg.seed)
            if "hmm_tv" in cfg.metrics:
                target["hmm_tv"] = ngram_tv(hmm, tokens, tokenizer.bos_id, tokenizer.eos_id, (2, 3),
                                            cfg.bootstrap_resamples, cfg.seed)
        if "eps_nll" in cfg.metrics:
            results["remask_correction"] = in_sampler_self_correction(
                hmm, samples.tokens, samples.remasks or [[] for _ in samples.tokens], tokenizer.bos_id,
                tokenizer.eos_id, tokenizer.vocab_size, cfg.hmm_eps)
    if sanity:
        from dsl_scale.evaluation.sanity import summarise

        results["sanity"] = summarise(rows)
    elif sanity_skipped:
        results["sanity"] = {"passed": None, "skipped": sanity_skipped}
    if {"calibration", "self_correction"} & set(cfg.metrics):
        from dsl_scale.evaluation.analysis import run_analyses

        results.update(run_analyses(cfg))
        results["checkpoint"] = cfg.checkpoint
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


def _sanity_sets(cfg: EvalConfig, samples: Samples | None) -> tuple[dict[str, list[list[int]]], str]:
    """({"real": …, "shuffled": …} token lists, "") when sanity rows apply (a sample metric with a rule);
    ({}, why) when they were asked for but the reference split is too small for them (recorded, warned)."""
    from dsl_scale.evaluation.sanity import SANITY_METRICS, sanity_tokens

    if not cfg.sanity or samples is None or not set(SANITY_METRICS) & set(cfg.metrics) or not cfg.reference:
        return {}, ""
    try:
        return sanity_tokens(cfg.reference, cfg.reference_split, [len(t) for t in samples.tokens], cfg.seed), ""
    except ValueError as err:
        if ranks.rank() == 0:
            print(f"[dsl_scale] warning: no sanity rows: {err}", flush=True)
        return {}, str(err)


def _reference_seq_len(shard_dir: str) -> int:
    from dsl_scale.data.loader import read_manifest

    return int(read_manifest(shard_dir)["seq_len"])


def _hmm_source(cfg: EvalConfig) -> str:
    from dsl_scale.data.loader import read_manifest
    from dsl_scale.data.synthetic_hmm import is_synthetic

    source = cfg.hmm_source or read_manifest(cfg.reference)["source"]
    if not is_synthetic(source):
        raise ValueError(f"metrics=[hmm_nll] scores synthetic-hmm data, but {cfg.reference} was prepared from "
                         f"{source!r}; pass hmm_source=synthetic-hmm[-…] or reference= a synthetic-hmm shard dir")
    return source


def _feature_metrics(cfg: EvalConfig, samples: Samples, tokenizer,
                     sanity: dict[str, list[list[int]]]) -> dict[str, dict[str, Any]]:
    """{"samples" | "real" | "shuffled": {"mauve": …, "frechet": …}}: each text set against the references,
    on one featurizer, each figure with its bootstrap interval."""
    from dsl_scale.evaluation.features import build_featurizer, featurize
    from dsl_scale.evaluation.inputs import metric_text

    refs = reference_tokens(cfg.reference, cfg.reference_split, [len(t) for t in samples.tokens])
    featurizer = build_featurizer(cfg.featurizer, cfg.featurizer_path, cfg.feature_batch_size)
    started = time.time()
    q, q_info = featurize([metric_text(t, tokenizer) for t in refs], featurizer, cfg.cache_dir)
    text_sets = {"samples": samples.texts, **{k: [metric_text(t, tokenizer) for t in v] for k, v in sanity.items()}}
    out: dict[str, dict[str, Any]] = {}
    for name, texts in text_sets.items():
        p, p_info = featurize(texts, featurizer, cfg.cache_dir)
        out[name] = _two_sample_metrics(cfg, p, q)
        for entry in out[name].values():
            entry.update({"featurizer": featurizer.identity(), "feature_dim": int(p.shape[1]),
                          "features": {"samples": p_info, "references": q_info}})
    reference = {"path": cfg.reference, "split": cfg.reference_split, "count": len(refs),
                 "selection": "evenly spaced blocks, each cut to its sample's token length",
                 "same_token_lengths": [len(r) for r in refs] == [len(t) for t in samples.tokens]}
    for entry in out["samples"].values():
        entry.update({"reference": reference, "featurize_seconds": time.time() - started})
    return out


def _two_sample_metrics(cfg: EvalConfig, p, q) -> dict[str, dict[str, Any]]:
    from dsl_scale.evaluation.bootstrap import bootstrap_two_sample

    result: dict[str, dict[str, Any]] = {}
    if "mauve" in cfg.metrics:
        from dsl_scale.evaluation.mauve import mauve_score
        from dsl_scale.evaluation.mauve_bootstrap import mauve_interval

        score = mauve_score(p, q)
        interval = mauve_interval(p, q, cfg.bootstrap_resamples, cfg.seed)
        result["mauve"] = {**score, "ci95": interval["ci95"],
                           "bootstrap": {k: interval.get(k) for k in ("resamples", "seed", "interval")}}
    if "frechet" in cfg.metrics:
        from dsl_scale.evaluation.frechet import frechet_distance

        interval = bootstrap_two_sample(lambda i, j: frechet_distance(p[i], q[j]), len(p), len(q),
                                        cfg.bootstrap_resamples, cfg.seed)
        low, high = interval["ci95"] or (None, None)
        ci95 = None if low is None else [max(0.0, low), high]  # a distance is >= 0
        result["frechet"] = {"frechet": interval["value"], "ci95": ci95, "n_p": len(p), "n_q": len(q),
                             "bootstrap": {k: interval.get(k) for k in ("resamples", "seed", "interval")}}
    return result


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
    for key, field in (("mauve", "mauve"), ("frechet", "frechet"), ("gen_ppl", "gen_ppl"), ("entropy", "entropy"),
                       ("hmm_nll", "nll_per_token"), ("eps_nll", "eps_nll"), ("kn_ppl", "gen_ppl"),
                       ("nelbo", "nelbo")):
        if key in results and results[key].get(field) is not None:
            parts.append(f"{key} {results[key][field]:.4f}")
    if "calibration" in results:
        parts.append("ECE visible/masked " + "/".join(f"{results['calibration'][k]['ece'] or float('nan'):.4f}"
                                                       for k in ("visible", "masked")))
    if "self_correction" in results:
        parts.append(f"repaired {results['self_correction']['repaired']:.4f}")
    if "sanity" in results:
        parts.append("sanity " + ("passed" if results["sanity"]["passed"] else "FAILED"))
    return ", ".join(parts) + f" ({results['wall_time_s']:.1f} s)"
