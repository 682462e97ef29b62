"""Schema of launchers/evaluate.py (configs/evaluate.yaml), registered with Hydra's ConfigStore.

The MAUVE protocol of docs/method.md §6 is deliberately not in here: it is pinned in `mauve.PROTOCOL`, so no
override can make two results files disagree on it silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from dsl_scale.config import check_choices, choice

METRICS = ("mauve", "frechet", "gen_ppl", "entropy", "hmm_nll", "eps_nll", "hmm_tv", "kn_ppl", "nelbo",
           "calibration", "self_correction")
# need samples=; eps_nll also scores the sampler's realised remasks (in-sampler self-correction)
SAMPLE_METRICS = ("mauve", "frechet", "gen_ppl", "entropy", "hmm_nll", "eps_nll", "hmm_tv", "kn_ppl")
CHECKPOINT_METRICS = ("nelbo", "calibration", "self_correction")  # need checkpoint=


@dataclass
class EvalConfig:
    samples: str = ""  # samples.jsonl from launchers/sample.py (index, tokens, text, nfe)
    reference: str = ""  # prepared shard dir; its `reference_split` blocks are the MAUVE references
    reference_split: str = "val"
    metrics: list[str] = field(default_factory=lambda: ["mauve", "gen_ppl", "entropy"])
    out: str = "results.json"
    # MAUVE and Fréchet features
    # minilm (offline, order-aware) | minilm-mean | gpt2-large (local path or HF cache) | ar / ar-last (our AR
    # run's last hidden states, mean-pooled / last token: in-domain for char and synthetic data)
    featurizer: str = "minilm"
    featurizer_path: str = ""  # gpt2-large: a local model dir (empty = the HF cache); ar: the AR run dir
    feature_batch_size: int = 32
    cache_dir: str = "~/.cache/dsl_scale/features"  # "" disables the feature cache
    # Generative perplexity
    scorer: str = ""  # a local Hugging Face causal-LM dir, or one of our AR run / checkpoint dirs
    scorer_batch_size: int = 8
    scorer2: str = ""  # a second AR scorer (e.g. another training seed): results gen_ppl_2 beside gen_ppl
    # Kneser–Ney character n-gram scorer (metrics=[kn_ppl], evaluation/kneser_ney.py), fitted on the reference
    # data's `kn_split` blocks (cached under cache_dir)
    kn_order: int = 5
    kn_split: str = "train"
    # ε of the smoothed source (metrics=[eps_nll]: every sample scored, none dropped; evaluation/hmm_marginals.py)
    hmm_eps: float = 1e-3
    # Likelihood bound (metrics=[nelbo])
    checkpoint: str = ""  # run dir of the checkpoint whose bound is computed
    weights: str = choice("auto", "auto", "ema", "model")  # auto: EMA when the checkpoint has it
    nelbo_examples: int = 0  # validation blocks evaluated; 0 = the whole split
    nelbo_batch_size: int = 16
    seed: int = 0  # seed of every evaluation draw: NELBO times and masks, bootstraps, drafts, corruptions
    # Intervals and sanity rows
    bootstrap_resamples: int = 1000  # 95 % intervals, texts resampled (evaluation/bootstrap.py); 0 = none
    # Sanity rows: held-out real text (blocks other than the references) and the same text with its tokens
    # shuffled within each sequence, scored like the samples; a failed check marks the results `sanity.passed`
    # false and the reproduction report prints "sanity failed" instead of that metric's table.
    sanity: bool = True
    # Exact likelihood on the synthetic-hmm testbed (metrics=[hmm_nll]); "" = the reference data's source
    hmm_source: str = ""
    # The paper's analyses of `checkpoint` (metrics=[calibration,self_correction]) on held-out blocks
    analysis_examples: int = 256  # blocks of `reference_split`, spread evenly (0 = all)
    analysis_batch_size: int = 16
    analysis_visible_snr: float = 0.0  # DSL only: > 0 feeds visible tokens through the converter at this SNR
    calibration_bins: int = 15
    calibration_binning: str = choice("equal-mass", "equal-mass", "equal-width")
    calibration_mask_low: float = 0.1  # each draft block is masked at a rate t ~ U[low, high]
    calibration_mask_high: float = 0.9
    calibration_fill: float = 0.5  # fraction of the masks then filled from the model's own x_θ
    corruption_rate: float = 0.1  # self_correction: fraction of inner tokens replaced by random ids


def register_eval_configs() -> None:
    ConfigStore.instance().store(name="evaluate_schema", node=EvalConfig)


def validate_eval_config(cfg: EvalConfig) -> None:
    """Cross-field checks, each naming the keys involved. Raises ValueError."""
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown or not cfg.metrics:
        raise ValueError(f"metrics={list(cfg.metrics)}: each must be one of {METRICS}, and at least one given")
    check_choices(cfg)
    sample_metrics = set(SAMPLE_METRICS) & set(cfg.metrics)
    if sample_metrics and not cfg.samples:
        raise ValueError(f"metrics {sorted(sample_metrics)} need samples=FILE.jsonl")
    needs_reference = sorted({"mauve", "frechet", "calibration", "self_correction"} & set(cfg.metrics))
    if needs_reference and not cfg.reference:
        raise ValueError(f"metrics {needs_reference} need reference=SHARD_DIR (its validation blocks are the "
                         "references / the analysed text)")
    hmm = sorted({"hmm_nll", "eps_nll", "hmm_tv"} & set(cfg.metrics))
    if hmm and not (cfg.hmm_source or cfg.reference):
        raise ValueError(f"metrics {hmm} need reference=SHARD_DIR of synthetic-hmm data or hmm_source=NAME")
    if "kn_ppl" in cfg.metrics and (not cfg.reference or cfg.kn_order < 1):
        raise ValueError(f"metrics=[kn_ppl] needs reference=SHARD_DIR (fitted on its {cfg.kn_split!r} blocks) and "
                         f"kn_order >= 1, got kn_order={cfg.kn_order}")
    if not 0 < cfg.hmm_eps < 1:
        raise ValueError(f"hmm_eps={cfg.hmm_eps} must lie in (0, 1)")
    if cfg.featurizer.startswith("ar") and {"mauve", "frechet"} & set(cfg.metrics) and not cfg.featurizer_path:
        raise ValueError(f"featurizer={cfg.featurizer} needs featurizer_path=AR_RUN_DIR")
    if "gen_ppl" in cfg.metrics and not cfg.scorer:
        raise ValueError("metrics=[gen_ppl] needs scorer=PATH (a local Hugging Face causal LM or an AR run dir)")
    checkpoint_metrics = sorted(set(CHECKPOINT_METRICS) & set(cfg.metrics))
    if checkpoint_metrics and not cfg.checkpoint:
        raise ValueError(f"metrics {checkpoint_metrics} need checkpoint=RUN_DIR")
    if min(cfg.feature_batch_size, cfg.scorer_batch_size, cfg.nelbo_batch_size) < 1 or cfg.nelbo_examples < 0:
        raise ValueError("feature_batch_size, scorer_batch_size, nelbo_batch_size must be >= 1, nelbo_examples >= 0")
    if min(cfg.bootstrap_resamples, cfg.analysis_examples) < 0 or min(cfg.analysis_batch_size,
                                                                       cfg.calibration_bins) < 1:
        raise ValueError("bootstrap_resamples and analysis_examples must be >= 0, analysis_batch_size and "
                         "calibration_bins >= 1")
    if not (0 <= cfg.calibration_mask_low <= cfg.calibration_mask_high <= 1 and 0 <= cfg.calibration_fill <= 1):
        raise ValueError(f"need 0 <= calibration_mask_low <= calibration_mask_high <= 1 and 0 <= calibration_fill "
                         f"<= 1, got {cfg.calibration_mask_low}, {cfg.calibration_mask_high}, {cfg.calibration_fill}")
    if not 0 < cfg.corruption_rate <= 1 or cfg.analysis_visible_snr < 0:
        raise ValueError(f"corruption_rate={cfg.corruption_rate} must lie in (0, 1] and analysis_visible_snr="
                         f"{cfg.analysis_visible_snr} be >= 0")
