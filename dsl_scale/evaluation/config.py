"""Schema of launchers/evaluate.py (configs/evaluate.yaml), registered with Hydra's ConfigStore.

The MAUVE protocol of SPEC §6 is deliberately not in here: it is pinned in `mauve.PROTOCOL`, so no
override can make two results files disagree on it silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from dsl_scale.config import check_choices, choice

METRICS = ("mauve", "gen_ppl", "entropy", "nelbo")


@dataclass
class EvalConfig:
    samples: str = ""  # samples.jsonl from launchers/sample.py (index, tokens, text, nfe)
    reference: str = ""  # prepared shard dir; its `reference_split` blocks are the MAUVE references
    reference_split: str = "val"
    metrics: list[str] = field(default_factory=lambda: ["mauve", "gen_ppl", "entropy"])
    out: str = "results.json"
    # MAUVE features
    featurizer: str = "minilm"  # minilm (offline, order-aware) | minilm-mean | gpt2-large (local path or HF cache)
    featurizer_path: str = ""  # a local model dir for gpt2-large; empty = the HF cache under that name
    feature_batch_size: int = 32
    cache_dir: str = "~/.cache/dsl_scale/features"  # "" disables the feature cache
    # Generative perplexity
    scorer: str = ""  # a local Hugging Face causal-LM dir, or one of our AR run / checkpoint dirs
    scorer_batch_size: int = 8
    # Likelihood bound (metrics=[nelbo])
    checkpoint: str = ""  # run dir of the checkpoint whose bound is computed
    weights: str = choice("auto", "auto", "ema", "model")  # auto: EMA when the checkpoint has it
    nelbo_examples: int = 0  # validation blocks evaluated; 0 = the whole split
    nelbo_batch_size: int = 16
    seed: int = 0  # seed of the NELBO's times and masks


def register_eval_configs() -> None:
    ConfigStore.instance().store(name="evaluate_schema", node=EvalConfig)


def validate_eval_config(cfg: EvalConfig) -> None:
    """Cross-field checks, each naming the keys involved. Raises ValueError."""
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown or not cfg.metrics:
        raise ValueError(f"metrics={list(cfg.metrics)}: each must be one of {METRICS}, and at least one given")
    check_choices(cfg)
    sample_metrics = {"mauve", "gen_ppl", "entropy"} & set(cfg.metrics)
    if sample_metrics and not cfg.samples:
        raise ValueError(f"metrics {sorted(sample_metrics)} need samples=FILE.jsonl")
    if "mauve" in cfg.metrics and not cfg.reference:
        raise ValueError("metrics=[mauve] needs reference=SHARD_DIR (validation blocks are the references)")
    if "gen_ppl" in cfg.metrics and not cfg.scorer:
        raise ValueError("metrics=[gen_ppl] needs scorer=PATH (a local Hugging Face causal LM or an AR run dir)")
    if "nelbo" in cfg.metrics and not cfg.checkpoint:
        raise ValueError("metrics=[nelbo] needs checkpoint=RUN_DIR")
    if min(cfg.feature_batch_size, cfg.scorer_batch_size, cfg.nelbo_batch_size) < 1 or cfg.nelbo_examples < 0:
        raise ValueError("feature_batch_size, scorer_batch_size, nelbo_batch_size must be >= 1, nelbo_examples >= 0")
