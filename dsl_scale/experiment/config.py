"""The reproduction experiment's settings (configs/experiment/*.yaml): data, the runs, the sampling grid.

Loaded over this schema with OmegaConf, so an unknown or misspelt key fails with its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

EXPERIMENT_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "experiment"
CHECKPOINTS = ("mdlm", "dsl")  # the default arms after the matched extra steps
AR = "ar"  # a method's checkpoint "ar": the experiment's (first) AR run, sampled with sampler=ar
ARM_OBJECTIVES = ("mdlm", "dsl", "mdlm_corrupt")


@dataclass
class Arm:
    """A fine-tuning run from the pretrained MDLM (or from another arm's final weights), once per
    train.finetune_seeds entry. Run directory: runs/NAME for the first fine-tune seed, runs/NAME_ftK after."""

    name: str
    objective: str  # one of ARM_OBJECTIVES
    overrides: list[str] = field(default_factory=list)
    init_from: str = "pretrain"  # "pretrain" or an earlier arm's name (its run with the same fine-tune seed)
    steps: int = 0  # 0: train.extra_steps


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
    # AR runs' seeds: the first is runs/ar (featurizer, scorer, the AR generator row), a second runs/ar_seedK
    # (the second gen-PPL scorer, eval scorer2)
    ar_seeds: list[int] = field(default_factory=lambda: [0])
    eval_every: int = 500
    save_every: int = 500
    arms: list[Arm] = field(default_factory=lambda: [
        Arm("mdlm", "mdlm"),
        # exact MDLM masking on a quarter of the sequences, so the discrete samplers see inputs it was trained on
        Arm("dsl", "dsl", ["objective.mdlm_fraction=0.25"]),
    ])
    finetune_seeds: list[int] = field(default_factory=lambda: [0])  # train.seed of every arm's run, one run each
    overrides: list[str] = field(default_factory=lambda: ["model.dropout=0.0"])  # every training run


@dataclass
class Method:
    label: str
    checkpoint: str  # an arm's name, or "ar" (the AR run, sampler=ar)
    sampler: str  # a configs/sampler preset
    overrides: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # the T values it runs at ([]: every T of sample.steps)
    top_p: float | None = None  # null: sample.top_p
    # set by `expanded_methods` (one Method per fine-tune seed): the run sampled and its fine-tune seed
    run: str = ""
    finetune_seed: int | None = None


@dataclass
class Frontier:
    """Quality against diversity: `method` (a label of sample.methods) again at each temperature, at `steps`."""

    method: str
    temperatures: list[float]
    steps: list[int] = field(default_factory=lambda: [16])


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
    frontier: list[Frontier] = field(default_factory=list)


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
    dsl_visible_snr: float | None = 5.0  # the DSL arms' analysis_visible_snr; null: the embedding table
    kn_order: int = 5  # metrics kn_ppl: the Kneser–Ney scorer's order


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
    # > 0: start no stage after this many minutes of this invocation (the same command continues later)
    stop_after_minutes: float = 0.0
    # stages run at once where they do not read each other's output, the cores shared between them: on CPU a
    # small model's training and sampling scale poorly across cores, and every stage's start-up is serial work
    workers: int = 1
    # sample and evaluate commands run in long-lived worker processes (cli/cell_worker.py): one import of
    # torch, DeepSpeed and megatron-core per worker instead of one per cell
    in_process: bool = False


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


def arm_names(e: Experiment) -> list[str]:
    return [a.name for a in e.train.arms]


def arm_run(e: Experiment, arm: str, finetune_seed: int) -> str:
    """The run directory name of `arm` fine-tuned with `finetune_seed` (the first seed keeps the arm's name)."""
    return arm if finetune_seed == e.train.finetune_seeds[0] else f"{arm}_ft{finetune_seed}"


def ar_run(e: Experiment, seed: int) -> str:
    return "ar" if seed == e.train.ar_seeds[0] else f"ar_seed{seed}"


def expanded_methods(e: Experiment) -> list[Method]:
    """Every sampled row: each method (and each frontier temperature) once per fine-tune seed, labelled
    "LABEL [ft K]" after the first seed; methods of the AR run once."""
    base = list(e.sample.methods)
    by_label = {m.label: m for m in base}
    for f in e.sample.frontier:
        m = by_label[f.method]
        base += [Method(f"{m.label}, τ={t:g}", m.checkpoint, m.sampler, [*m.overrides, f"sampler.temperature={t}"],
                        list(f.steps), m.top_p) for t in f.temperatures]
    out = []
    for seed in e.train.finetune_seeds:
        for m in base:
            if m.checkpoint == AR and seed != e.train.finetune_seeds[0]:
                continue
            first = seed == e.train.finetune_seeds[0]
            run = ar_run(e, e.train.ar_seeds[0]) if m.checkpoint == AR else arm_run(e, m.checkpoint, seed)
            out.append(Method(m.label if first else f"{m.label} [ft {seed}]", m.checkpoint, m.sampler,
                              list(m.overrides), list(m.steps) or list(e.sample.steps), m.top_p, run,
                              None if m.checkpoint == AR else seed))
    return out


def check_experiment(e: Experiment, where: str = "experiment") -> None:
    """Cross-field checks, each naming the key. Raises ValueError."""
    arms = arm_names(e)
    if len(set(arms)) != len(arms) or not arms or any(a in ("pretrain", AR) or not a.isidentifier() for a in arms):
        raise ValueError(f"{where}: train.arms names {arms} must be distinct identifiers, not 'pretrain' or 'ar'")
    for i, a in enumerate(e.train.arms):
        if a.objective not in ARM_OBJECTIVES or a.init_from not in ("pretrain", *arms[:i]) or a.steps < 0:
            raise ValueError(f"{where}: train.arms[{a.name}] needs objective in {ARM_OBJECTIVES}, init_from "
                             f"'pretrain' or an earlier arm, steps >= 0 (got {a.objective}, {a.init_from}, {a.steps})")
    for key, seeds in (("finetune_seeds", e.train.finetune_seeds), ("ar_seeds", e.train.ar_seeds)):
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or (key == "ar_seeds" and len(seeds) > 2):
            raise ValueError(f"{where}: train.{key}={seeds} must be distinct seeds >= 0 (ar_seeds: one or two)")
    bad = [m.checkpoint for m in e.sample.methods if m.checkpoint not in (*arms, AR)]
    if bad:
        raise ValueError(f"{where}: sample.methods[].checkpoint {bad} must be one of {(*arms, AR)}")
    wrong_ar = [m.label for m in e.sample.methods if (m.checkpoint == AR) != (m.sampler == "ar")]
    if wrong_ar:
        raise ValueError(f"{where}: sample.methods {wrong_ar}: checkpoint ar and sampler ar go together")
    if not e.sample.methods or len({m.label for m in e.sample.methods}) != len(e.sample.methods):
        raise ValueError(f"{where}: sample.methods must be non-empty with distinct labels")
    if not e.sample.steps or min(e.sample.steps) < 2:
        raise ValueError(f"{where}: sample.steps={e.sample.steps} must be a non-empty list of T >= 2")
    labels = {m.label for m in e.sample.methods}
    for m in e.sample.methods:
        if not set(m.steps) <= set(e.sample.steps):
            raise ValueError(f"{where}: sample.methods[{m.label}].steps={m.steps} must be within sample.steps")
    for f in e.sample.frontier:
        if f.method not in labels or not f.temperatures or not set(f.steps) <= set(e.sample.steps):
            raise ValueError(f"{where}: sample.frontier[{f.method}] must name a method, give temperatures and "
                             f"steps within sample.steps")
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
    for metric in ("hmm_nll", "eps_nll", "hmm_tv"):
        if metric in e.eval.metrics and not is_synthetic(e.data.source):
            raise ValueError(f"{where}: eval.metrics {metric} needs a synthetic-hmm data.source, not "
                             f"{e.data.source!r}")
    if e.eval.dsl_visible_snr is not None and not e.eval.dsl_visible_snr > 0:
        raise ValueError(f"{where}: eval.dsl_visible_snr={e.eval.dsl_visible_snr} must be > 0 or null")


def quality_metric(e: Experiment) -> str:
    """The figure the report's step-efficiency line and plot lead with: the exact NLL when there is one."""
    return next(m for m in ("eps_nll", "hmm_nll", "mauve", "frechet", "gen_ppl", "entropy") if m in e.eval.metrics)


def experiment_dict(e: Experiment) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(e))
