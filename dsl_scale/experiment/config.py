"""The reproduction experiment's settings (configs/experiment/*.yaml): data, the runs, the sampling grid.

Loaded over this schema with OmegaConf, so an unknown or misspelt key fails with its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

EXPERIMENT_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "experiment"
CHECKPOINTS = ("mdlm", "dsl")  # the two arms after the matched extra steps


@dataclass
class DataSettings:
    source: str = "wikipedia-sample"  # a dsl_scale.data source name (e.g. packaged-english) or a local path
    tokenizer: str = "char"
    seq_len: int = 128
    val_fraction: float = 0.05  # the evaluation needs 2 × sample.num_samples validation blocks (sanity rows)


@dataclass
class TrainSettings:
    model: str = "char_small"  # a configs/model preset
    ranks: int = 1  # processes per training run: torchrun when > 1, plain python when 1
    global_batch: int = 32
    micro_batch: int = 32
    lr: float = 1.0e-3
    warmup_steps: int = 200
    ema: float = 0.99
    pretrain_steps: int = 2000  # MDLM from scratch
    extra_steps: int = 500  # then both arms: DSL fine-tune, and MDLM continued, for the same steps
    extra_warmup_steps: int = 20
    ar_steps: int = 1200  # the AR baseline that scores gen-PPL, trained on the same data
    eval_every: int = 500
    save_every: int = 500
    dsl_overrides: list[str] = field(default_factory=lambda: ["objective.mdlm_fraction=0.25"])
    overrides: list[str] = field(default_factory=lambda: ["model.dropout=0.0"])  # every training run


@dataclass
class Method:
    label: str
    checkpoint: str  # one of CHECKPOINTS
    sampler: str  # a configs/sampler preset
    overrides: list[str] = field(default_factory=list)


@dataclass
class SampleSettings:
    steps: list[int] = field(default_factory=lambda: [8, 16, 32, 64])  # the T grid
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # sampling seeds: each cell once per seed
    num_samples: int = 200
    batch_size: int = 50
    ranks: int = 1
    top_p: float = 0.9
    batch_invariant: bool = False  # batched forwards: several times faster on CPU, results still seeded
    hybrid_continuous_fraction: float = 0.25  # dsl_hybrid: continuous_steps = max(1, round(fraction · T))
    methods: list[Method] = field(default_factory=lambda: [
        Method("MDLM", "mdlm", "mdlm"),
        Method("MDLM + ReMDM-loop", "mdlm", "remdm_loop"),
        Method("DSL + ReMDM-loop", "dsl", "remdm_loop"),
        Method("DSL + confidence remasking", "dsl", "remdm_confidence", ["sampler.visible_snr=5.0"]),
        Method("DSL hybrid", "dsl", "dsl_hybrid"),
    ])


@dataclass
class EvalSettings:
    metrics: list[str] = field(default_factory=lambda: ["mauve", "frechet", "gen_ppl", "entropy"])
    # ar / ar-last: the experiment's own AR run's hidden states (in-domain); minilm, gpt2-large: pretrained
    featurizer: str = "ar"
    feature_batch_size: int = 32
    bootstrap_resamples: int = 1000  # 95 % intervals of every figure; 0 = none
    # The paper's analyses, once per arm (MDLM, DSL) on held-out blocks; [] = no analysis stages
    analyses: list[str] = field(default_factory=lambda: ["calibration", "self_correction"])
    analysis_examples: int = 256
    dsl_visible_snr: float | None = 5.0  # the DSL arm's analysis_visible_snr; null: the embedding table


@dataclass
class Experiment:
    name: str = "full"
    note: str = ""  # printed in the report (e.g. why this tokenizer)
    out_dir: str = "runs/reproduce"
    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    sample: SampleSettings = field(default_factory=SampleSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


def load_experiment(config: str | Path, overrides: list[str] | None = None) -> Experiment:
    """A YAML file (or a name under configs/experiment/) merged over the schema, then `key=value` overrides."""
    path = Path(config)
    if not path.suffix:
        path = EXPERIMENT_DIR / f"{config}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"experiment config {path} does not exist (known: {', '.join(known)})")
    merged = OmegaConf.merge(OmegaConf.structured(Experiment), OmegaConf.load(path),
                             OmegaConf.from_dotlist(list(overrides or [])))
    experiment: Experiment = OmegaConf.to_object(merged)
    check_experiment(experiment, str(path))
    return experiment


def check_experiment(e: Experiment, where: str = "experiment") -> None:
    """Cross-field checks, each naming the key. Raises ValueError."""
    bad = [m.checkpoint for m in e.sample.methods if m.checkpoint not in CHECKPOINTS]
    if bad:
        raise ValueError(f"{where}: sample.methods[].checkpoint {bad} must be one of {CHECKPOINTS}")
    if not e.sample.methods or len({m.label for m in e.sample.methods}) != len(e.sample.methods):
        raise ValueError(f"{where}: sample.methods must be non-empty with distinct labels")
    if not e.sample.steps or min(e.sample.steps) < 2:
        raise ValueError(f"{where}: sample.steps={e.sample.steps} must be a non-empty list of T >= 2")
    if min(e.train.pretrain_steps, e.train.extra_steps, e.train.ar_steps) < 1:
        raise ValueError(f"{where}: train.pretrain_steps, extra_steps and ar_steps must be >= 1")
    if e.train.ranks < 1 or e.sample.ranks < 1:
        raise ValueError(f"{where}: train.ranks and sample.ranks must be >= 1")
    if not e.sample.seeds or len(set(e.sample.seeds)) != len(e.sample.seeds) or min(e.sample.seeds) < 0:
        raise ValueError(f"{where}: sample.seeds={e.sample.seeds} must be distinct seeds >= 0, at least one")
    check_metrics(e, where)
    if e.sample.num_samples < 1 or not 0 < e.sample.hybrid_continuous_fraction < 1:
        raise ValueError(f"{where}: sample.num_samples must be >= 1 and 0 < sample.hybrid_continuous_fraction < 1")


def check_metrics(e: Experiment, where: str) -> None:
    from dsl_scale.data.synthetic_hmm import is_synthetic
    from dsl_scale.evaluation.config import CHECKPOINT_METRICS, SAMPLE_METRICS

    unknown = [m for m in e.eval.metrics if m not in SAMPLE_METRICS]
    if unknown or not e.eval.metrics:
        raise ValueError(f"{where}: eval.metrics {unknown or '[]'}: each must be one of {SAMPLE_METRICS}")
    unknown = [m for m in e.eval.analyses if m not in CHECKPOINT_METRICS or m == "nelbo"]
    if unknown:
        raise ValueError(f"{where}: eval.analyses {unknown}: each must be calibration or self_correction")
    if "hmm_nll" in e.eval.metrics and not is_synthetic(e.data.source):
        raise ValueError(f"{where}: eval.metrics hmm_nll needs a synthetic-hmm data.source, not {e.data.source!r}")
    if e.eval.dsl_visible_snr is not None and not e.eval.dsl_visible_snr > 0:
        raise ValueError(f"{where}: eval.dsl_visible_snr={e.eval.dsl_visible_snr} must be > 0 or null")


def quality_metric(e: Experiment) -> str:
    """The figure the report's step-efficiency line and plot lead with: the exact NLL when there is one."""
    return next(m for m in ("hmm_nll", "mauve", "frechet", "gen_ppl", "entropy") if m in e.eval.metrics)


def experiment_dict(e: Experiment) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(e))
