"""Typed configuration schema, registered with Hydra's ConfigStore.

Hydra merges `configs/` over this schema, so a key that is not declared here is rejected with the
key's name before anything runs; `validate` adds the cross-field checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


def choice(default: str, *allowed: str) -> Any:
    """A string field that must be one of `allowed` (checked, with every other such field, by `check_choices`)."""
    return field(default=default, metadata={"choices": allowed})


# --- model --------------------------------------------------------------------------------------------------


@dataclass
class ArchitectureConfig:
    """The network's shape: declared once here, shared by ModelConfig and model/dit.py's DiTConfig."""

    recompute: bool = False  # activation recomputation: keep only block inputs, redo the block in backward
    hidden: int = 512
    n_blocks: int = 8
    n_heads: int = 8
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    time_conditioning: bool = False


@dataclass
class _Preset:
    name: str = "tiny"


@dataclass
class ModelConfig(ArchitectureConfig, _Preset):
    """configs/model/NAME.yaml: what a preset changes of these defaults (`tiny` is the defaults)."""

    seq_len: int = 128
    # torch.compile of each block's attention, MLP and residual paths (parallel/compile.py): auto = with CUDA
    # and ZeRO < 3 (on the CPU it does not pay); true; false. Any: Hydra reads `model.compile=true` as a bool.
    compile: Any = "auto"
    # tokens per chunk of the training cross-entropy (parallel/cross_entropy.py): fp32 logits of one chunk only
    loss_chunk_tokens: int = 4096


# --- objectives: one schema per variant; configs/objective/NAME.yaml picks objective_schema/NAME ------------

OBJECTIVES = ("mdlm", "ar", "dsl", "mdlm_corrupt")


@dataclass
class ObjectiveSchema:
    """What every objective has; `objective=NAME` composes the subclass in OBJECTIVE_CONFIGS[NAME]."""

    name: str = choice("mdlm", *OBJECTIVES)


@dataclass
class LogLinearMasking:
    # MDLM's log-linear schedule: mask probability (1 − eps)·t (DSL: on its exact-MDLM sequences).
    eps: float = 1e-3


@dataclass
class SNRMixtureConfig(LogLinearMasking):
    """DSL's per-sequence SNR mixture (diffusion/dsl.py SNRSchedule is built on these fields).

    First, with prob mdlm_fraction, exact MDLM masking (s ∈ {0, ∞}, every position on the embedding-table
    path: the token or [MASK]); otherwise, with prob p_roar, smoothed ROAR, else log-normal per token.
    mdlm_fraction > 0 trains the inputs the discrete samplers feed. Defaults: docs/method.md §4's (tunable)."""

    mdlm_fraction: float = 0.0
    p_roar: float = 0.1
    # Smoothed ROAR: k ~ U{0..L-1}, a random order; the first k positions "clean" with
    # s ~ U[roar_clean_low·s_max, s_max], the rest "masked" with s ~ U[0, roar_masked_high).
    s_max: float = 100.0
    roar_clean_low: float = 0.8
    roar_masked_high: float = 1.0
    # Log-normal: log s ~ N(lognormal_mean, lognormal_std²), then s ≤ s_clamp.
    lognormal_mean: float = 1.69
    lognormal_std: float = 0.9
    s_clamp: float = 40.0

    def validate(self) -> None:
        if not (0 <= self.p_roar <= 1 and 0 <= self.mdlm_fraction <= 1):
            raise ValueError(f"objective.p_roar={self.p_roar} and objective.mdlm_fraction={self.mdlm_fraction} "
                             "must lie in [0, 1]")
        if not 0 <= self.roar_clean_low <= 1 or self.s_max <= 0:
            raise ValueError(f"need objective.s_max > 0 and 0 <= objective.roar_clean_low <= 1, got "
                             f"{self.s_max}, {self.roar_clean_low}")
        if self.roar_masked_high <= 0 or self.s_clamp <= 0 or self.lognormal_std < 0:
            raise ValueError("objective.roar_masked_high and objective.s_clamp must be > 0, "
                             "objective.lognormal_std >= 0")


@dataclass
class ARObjectiveConfig(ObjectiveSchema):
    """Autoregressive baseline: causal attention, next-token loss (docs/method.md §2)."""

    name: str = choice("ar", "ar")


@dataclass
class MDLMObjectiveConfig(LogLinearMasking, ObjectiveSchema):
    """Absorbing-state masked diffusion, log-linear schedule, SUBS, NELBO weight 1/t (docs/method.md §3)."""

    name: str = choice("mdlm", "mdlm")


@dataclass
class DSLObjectiveConfig(SNRMixtureConfig, MDLMObjectiveConfig):
    """Discrete Stochastic Localization (docs/method.md §4): z = s·K_x + √s·ε per position, converter z → input
    embedding, unweighted cross-entropy over all positions (configs/objective/dsl.yaml)."""

    name: str = choice("dsl", "dsl")
    # Token keys K [V, key_dim]: seeded (NumPy's frozen legacy stream), unit-norm, frozen, saved in the
    # checkpoint as the converter's `keys` buffer. Changing key_seed or key_dim makes a different model.
    key_dim: int = 48  # tunable
    key_seed: int = 0
    # Converter p = softmax(beta·z·Kextᵀ + b), h = W·p + c (model/converter.py).
    beta_init: float = 1.0  # tunable
    # Likelihood bound (evaluation only): ½∫₀^{s*} mmse(s) ds + CE(x | z_{s*}), trapezoid rule on 0 plus
    # bound_points - 1 log-spaced SNRs from bound_s_min to s* = bound_s_star, bound_samples noise draws each.
    bound_s_star: float = 100.0
    bound_s_min: float = 1e-3
    bound_points: int = 64
    bound_samples: int = 1


@dataclass
class MDLMCorruptObjectiveConfig(LogLinearMasking, ObjectiveSchema):
    """The discrete-corruption control (diffusion/objectives.py MDLMCorruptObjective): MDLM's masking and loss,
    plus uniform token noise on a share of the visible positions and cross-entropy at every visible one, so the
    visible-position outputs are trained without DSL's channel (configs/objective/mdlm_corrupt.yaml)."""

    name: str = choice("mdlm_corrupt", "mdlm_corrupt")
    corrupt_rate: float = 0.1  # each visible token is replaced by a uniform other id with this probability
    visible_weight: float = 1.0  # weight of the visible-position cross-entropy beside the NELBO


OBJECTIVE_CONFIGS: dict[str, type[ObjectiveSchema]] = {
    "mdlm": MDLMObjectiveConfig, "ar": ARObjectiveConfig, "dsl": DSLObjectiveConfig,
    "mdlm_corrupt": MDLMCorruptObjectiveConfig,
}
Objective = MDLMObjectiveConfig | ARObjectiveConfig | DSLObjectiveConfig | MDLMCorruptObjectiveConfig


def ObjectiveConfig(name: str = "mdlm", **fields: Any) -> Objective:  # noqa: N802 (reads like the class it makes)
    """The config of objective `name` with these fields; a field that objective lacks is a TypeError."""
    if name not in OBJECTIVE_CONFIGS:
        raise ValueError(f"objective.name={name!r} is not one of {OBJECTIVES}")
    cls = OBJECTIVE_CONFIGS[name]
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"objective {name!r} ({cls.__name__}) has no field(s) {unknown}")
    return cls(**fields)


DATA_FORMATS = ("mds", "wds", "both")  # data/writers.py FORMATS has one entry per choice
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine", "wsd")
BACKENDS = ("auto", "nccl", "gloo")  # parallel.backend (parallel/topology.py process_group_backend)


@dataclass
class DataConfig:
    path: str = "data/${data.source}-L${model.seq_len}"
    # When `path` does not exist, rank 0 prepares it from this source first ("" = never prepare).
    source: str = "wikipedia-sample"
    # Shards to prepare (mds, wds or both) and to read (wds reads webdataset tars; mds and both read MDS).
    format: str = choice("mds", *DATA_FORMATS)
    tokenizer: str = "gpt2"
    # Remote shards: MDS from s3://, gs://, ... (then `path` is the local cache); webdataset from a URL
    # prefix or a `pipe:` command with a {path} placeholder. "" = everything is under `path`.
    remote: str = ""
    workers: int = 0  # data-loader worker processes per rank (batches never depend on it)
    streams: int = 0  # webdataset only: parallel shard streams per run (0 = auto); see data/wds_reader.py
    verify_checksums: bool = False  # sha256 every local shard before training (sizes are always checked)
    check_hashes: bool = True  # each shard's xxh3 against the manifest on its first read (data/shard_hash.py)


@dataclass
class ParallelConfig:
    # torch.distributed's backend. auto: nccl when CUDA is available, else gloo, except that a process the
    # launcher gave GPUs (SLURM_*GPUS*, CUDA_VISIBLE_DEVICES) but CUDA cannot see is refused, not run on gloo;
    # nccl: CUDA required; gloo: always (collectives on CPU tensors).
    backend: str = choice("auto", *BACKENDS)
    tp: int = 1
    pp: int = 1
    zero_stage: int = 0
    # Megatron sequence parallelism: outside attention/MLP, activations are split along the sequence
    # over the TP group (needs tp > 1; pp = 1 for now).
    sequence_parallel: bool = False
    # ZeRO-3 keeps parameters smaller than this whole on every rank (DeepSpeed's default 1e5).
    zero3_persistence_threshold: int = 100_000


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 2500
    grad_clip: float = 1.0
    # after the warm-up: constant (MDLM's), cosine (to min_lr_ratio · lr at train.steps) or wsd (warmup-stable-
    # decay: constant, then linear to min_lr_ratio · lr over the last decay_steps steps); parallel/engine.py lr_factor
    schedule: str = choice("constant", *LR_SCHEDULES)
    min_lr_ratio: float = 0.0
    decay_steps: int = 0


@dataclass
class TrainConfig:
    steps: int = 1000
    global_batch: int = 16
    micro_batch: int = 8
    # "auto": bf16 on GPU, fp32 on CPU (bf16 matmuls are ~100x slower than fp32 on CPUs without bf16 units).
    precision: str = choice("auto", *PRECISIONS)
    ema: float = 0.9999
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_examples: int = 32
    save_every: int = 500
    keep_checkpoints: int = 3
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    resume: bool = True
    # resume even though the objective, model shape, seq_len, seed, global batch or data changed (logged; the
    # run then no longer replays an uninterrupted one)
    allow_config_change: bool = False
    save_final_weights: bool = False  # also write run_dir/final/model.safetensors (unsharded fp32 masters)
    # a checkpoint that cannot be written (disk full, quota, I/O error): stop the run, or warn and train on to the
    # next save; either way the partial tag is removed and `latest` kept (checkpoint/save_guard.py)
    on_save_error: str = choice("stop", "stop", "continue")
    # run_dir/run.lock: another host's lock not renewed for this long is taken over (checkpoint/run_lock.py)
    lock_lease_minutes: float = 10.0
    # [a, b]: a torch.profiler trace of steps a..b (Chrome / TensorBoard format) in run_dir/profile/; [] = off
    profile_steps: list[int] = field(default_factory=list)


@dataclass
class CheckpointConfig:
    # resuming a checkpoint saved at another TP/PP/DP/ZeRO layout: auto reshards it in-process, never refuses with
    # the offline command to run instead (checkpoint/relayout.py)
    reshard: str = choice("auto", "auto", "never")


@dataclass
class WandbConfig:
    """Weights & Biases, optional (`pip install -e .[tracking]`): rank 0 logs what metrics.jsonl and eval.jsonl
    get; the run id is kept in the run directory beside the checkpoints (run_dir/wandb.json), so a resumed or
    requeued job continues the same W&B run. TensorBoard (run_dir/tb) is written either way."""

    enabled: bool = False
    project: str = "dsl-scale"
    entity: str = ""  # "" = the W&B default entity
    name: str = ""  # "" = the run directory's name
    group: str = ""
    tags: list[str] = field(default_factory=list)
    mode: str = choice("", "", "online", "offline", "disabled")  # "" = $WANDB_MODE, else online


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveSchema = field(default_factory=MDLMObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run_dir: str = "runs/default"
    init_from: str | None = None


def register_configs() -> None:
    """The schema `configs/config.yaml` composes: `objective` is left open for objective_schema/NAME (the
    schema of the chosen objective, picked by interpolation in config.yaml's defaults list)."""
    store = ConfigStore.instance()
    schema = OmegaConf.structured(Config)
    schema.objective = MISSING
    store.store(name="schema", node=schema)
    for name, cls in OBJECTIVE_CONFIGS.items():
        store.store(group="objective_schema", name=name, node=cls)


# --- checks -------------------------------------------------------------------------------------------------


def check_choices(node: Any, prefix: str = "") -> None:
    """Every `choice(...)` field of a config dataclass (and of those inside it) holds an allowed value; a
    list field, each of its items. Raises ValueError naming the key, the value and the choices."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        allowed = f.metadata.get("choices")
        if allowed is not None:
            values = value if isinstance(value, (list, tuple)) else [value]
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{key}={value!r} is not one of {allowed}")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, f"{key}.")


def _field(model: Any, key: str) -> Any:
    return model[key] if isinstance(model, dict) else getattr(model, key)


def check_parallel_layout(model: Any = None, vocab_size: int | None = None, tp: int = 1, pp: int = 1,
                          world_size: int | None = None, sequence_parallel: bool = False) -> None:
    """The one check that a tensor × pipeline layout fits a model (any object or dict with ModelConfig's
    fields; None: not checked), a vocabulary (None: not checked) and a world size (None: not checked).
    Raises ValueError listing every problem, each naming the keys involved."""
    if tp < 1 or pp < 1:
        raise ValueError(f"parallel.tp={tp} and parallel.pp={pp} must be >= 1")
    problems = []
    if world_size is not None and world_size % (tp * pp):
        problems.append(f"world size {world_size} is not divisible by parallel.tp × parallel.pp = {tp} × {pp}")
    if model is not None:
        hidden, n_heads, n_blocks, cond_dim = (_field(model, k) for k in ("hidden", "n_heads", "n_blocks", "cond_dim"))
        if n_heads % tp:
            problems.append(f"model.n_heads={n_heads} is not divisible by parallel.tp={tp}")
        if n_blocks % pp:
            problems.append(f"model.n_blocks={n_blocks} is not divisible by parallel.pp={pp}")
        if pp > 1 and cond_dim > hidden:
            problems.append(f"model.cond_dim={cond_dim} > model.hidden={hidden}: the conditioning row cannot "
                            "travel with the activations between pipeline stages (parallel.pp > 1)")
    if vocab_size is not None and vocab_size % tp:
        problems.append(f"vocab size {vocab_size} is not divisible by parallel.tp={tp}")
    if sequence_parallel and (tp < 2 or pp > 1):
        problems.append("parallel.sequence_parallel=true needs parallel.tp > 1 and (for now) parallel.pp=1")
    if sequence_parallel and model is not None and _field(model, "seq_len") % tp:
        problems.append(f"model.seq_len={_field(model, 'seq_len')} is not divisible by parallel.tp={tp} "
                        "(sequence parallelism splits the sequence)")
    if problems:
        raise ValueError("; ".join(problems))


def validate(cfg: Config, world_size: int = 1) -> None:
    """Cross-field checks, each naming the keys involved. Raises ValueError."""
    check_choices(cfg)
    if isinstance(cfg.objective, SNRMixtureConfig):
        cfg.objective.validate()
    if cfg.parallel.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"parallel.zero_stage={cfg.parallel.zero_stage} must be 0, 1, 2 or 3")
    if str(cfg.model.compile).lower() not in ("auto", "true", "false"):
        raise ValueError(f"model.compile={cfg.model.compile!r} must be auto, true or false")
    if cfg.model.loss_chunk_tokens < 1:
        raise ValueError(f"model.loss_chunk_tokens={cfg.model.loss_chunk_tokens} must be at least 1")
    if cfg.model.seq_len < 3:
        raise ValueError(f"model.seq_len={cfg.model.seq_len} must be at least 3 ([BOS] x [EOS])")
    check_parallel_layout(cfg.model, None, cfg.parallel.tp, cfg.parallel.pp, world_size,
                          cfg.parallel.sequence_parallel)
    dp = world_size // (cfg.parallel.tp * cfg.parallel.pp)
    if cfg.train.global_batch % (cfg.train.micro_batch * dp):
        raise ValueError(
            f"train.global_batch={cfg.train.global_batch} is not divisible by "
            f"train.micro_batch × data-parallel size = {cfg.train.micro_batch} × {dp}"
        )
    if not 0 <= cfg.optim.min_lr_ratio <= 1 or cfg.optim.decay_steps < 0:
        raise ValueError(f"optim.min_lr_ratio={cfg.optim.min_lr_ratio} must lie in [0, 1] and "
                         f"optim.decay_steps={cfg.optim.decay_steps} be >= 0")
    if cfg.optim.schedule == "wsd" and not 0 < cfg.optim.decay_steps <= cfg.train.steps:
        raise ValueError(f"optim.schedule=wsd needs 0 < optim.decay_steps={cfg.optim.decay_steps} <= "
                         f"train.steps={cfg.train.steps}")
    if cfg.train.steps < 0 or cfg.train.save_every < 1 or cfg.train.eval_every < 1 or cfg.train.log_every < 1:
        raise ValueError("train.steps must be >= 0 and train.{save,eval,log}_every >= 1")
    window = list(cfg.train.profile_steps)
    if window and (len(window) != 2 or not 1 <= window[0] <= window[1]):
        raise ValueError(f"train.profile_steps={window}: want [] or [first, last] with 1 <= first <= last")


# --- typed configs --------------------------------------------------------------------------------------------


def to_config(cfg: DictConfig):
    """The typed dataclass behind a Hydra config. A key its schema does not declare (appended with `+key=`,
    which Hydra allows even into a schema) is an error rather than silently dropped."""
    _check_declared(cfg, "")
    return OmegaConf.to_object(cfg)


def _check_declared(node: DictConfig, prefix: str) -> None:
    kind = OmegaConf.get_type(node)
    declared = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else None
    for key in node.keys():
        if declared is not None and key not in declared:
            raise ValueError(f"{prefix}{key} is not a key of {kind.__name__} ({prefix.rstrip('.') or 'the config'})")
        if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue
        child = node[key]
        if isinstance(child, DictConfig):
            _check_declared(child, f"{prefix}{key}.")


def config_from_saved(saved: dict | DictConfig) -> Config:
    """The typed Config of a run config saved with a checkpoint (or built for an import). Runs saved before
    the per-objective schemas carry every objective's fields (all of DSL's even for mdlm): the fields the
    saved objective does not declare are dropped here, and only here; any other unknown key still fails."""
    saved = OmegaConf.to_container(saved) if isinstance(saved, DictConfig) else dict(saved)
    objective = dict(saved.get("objective") or {})
    name = objective.get("name", ObjectiveSchema.name)
    if name not in OBJECTIVE_CONFIGS:
        raise ValueError(f"objective.name={name!r} of the saved config is not one of {OBJECTIVES}")
    declared = {f.name for f in dataclasses.fields(OBJECTIVE_CONFIGS[name])}
    saved["objective"] = {k: v for k, v in objective.items() if k in declared}
    schema = OmegaConf.structured(Config(objective=OBJECTIVE_CONFIGS[name]()))
    return OmegaConf.to_object(OmegaConf.merge(schema, saved))
