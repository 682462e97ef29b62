"""Typed configuration schema, registered with Hydra's ConfigStore.

Hydra merges `configs/` over this schema, so a key that is not declared here is rejected with the
key's name before anything runs; `validate` adds the cross-field checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


@dataclass
class ModelConfig:
    name: str = "tiny"
    recompute: bool = False  # activation recomputation: keep only block inputs, redo the block in backward
    hidden: int = 512
    n_blocks: int = 8
    n_heads: int = 8
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    time_conditioning: bool = False
    seq_len: int = 128


@dataclass
class ObjectiveConfig:
    name: str = "mdlm"
    eps: float = 1e-3
    # DSL (configs/objective/dsl.yaml explains each); ignored by mdlm and ar.
    key_dim: int = 48
    key_seed: int = 0
    beta_init: float = 1.0
    mdlm_fraction: float = 0.0
    p_roar: float = 0.1
    s_max: float = 100.0
    roar_clean_low: float = 0.8
    roar_masked_high: float = 1.0
    lognormal_mean: float = 1.69
    lognormal_std: float = 0.9
    s_clamp: float = 40.0
    bound_s_star: float = 100.0
    bound_s_min: float = 1e-3
    bound_points: int = 64
    bound_samples: int = 1


@dataclass
class DataConfig:
    path: str = "data/${data.source}-L${model.seq_len}"
    # When `path` does not exist, rank 0 prepares it from this source first ("" = never prepare).
    source: str = "wikipedia-sample"
    # Shards to prepare (mds, wds or both) and to read (wds reads webdataset tars; mds and both read MDS).
    format: str = "mds"
    tokenizer: str = "gpt2"
    # Remote shards: MDS from s3://, gs://, ... (then `path` is the local cache); webdataset from a URL
    # prefix or a `pipe:` command with a {path} placeholder. "" = everything is under `path`.
    remote: str = ""
    workers: int = 0  # data-loader worker processes per rank (batches never depend on it)
    streams: int = 0  # webdataset only: parallel shard streams per run (0 = auto); see data/wds_reader.py
    verify_checksums: bool = False  # sha256 every local shard before training (sizes are always checked)


@dataclass
class ParallelConfig:
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


@dataclass
class TrainConfig:
    steps: int = 1000
    global_batch: int = 16
    micro_batch: int = 8
    # "auto": bf16 on GPU, fp32 on CPU (bf16 matmuls are ~100x slower than fp32 on CPUs without bf16 units).
    precision: str = "auto"
    ema: float = 0.9999
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_examples: int = 32
    save_every: int = 500
    keep_checkpoints: int = 3
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    resume: bool = True
    save_final_weights: bool = False  # also write run_dir/final/model.safetensors (unsharded, fp32)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/default"
    init_from: str | None = None


OBJECTIVES = ("mdlm", "ar", "dsl")
PRECISIONS = ("auto", "fp32", "bf16")


def register_configs() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


def validate(cfg: Config, world_size: int = 1) -> None:
    """Cross-field checks, each naming the keys involved. Raises ValueError."""
    if cfg.objective.name not in OBJECTIVES:
        raise ValueError(f"objective.name={cfg.objective.name!r} is not one of {OBJECTIVES}")
    if cfg.objective.name == "dsl":
        from dsl_scale.diffusion.dsl import SNRSchedule

        SNRSchedule.from_config(cfg.objective).validate()
    if cfg.train.precision not in PRECISIONS:
        raise ValueError(f"train.precision={cfg.train.precision!r} is not one of {PRECISIONS}")
    if cfg.parallel.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"parallel.zero_stage={cfg.parallel.zero_stage} must be 0, 1, 2 or 3")
    if cfg.model.seq_len < 3:
        raise ValueError(f"model.seq_len={cfg.model.seq_len} must be at least 3 ([BOS] x [EOS])")
    model_parallel = cfg.parallel.tp * cfg.parallel.pp
    if world_size % model_parallel:
        raise ValueError(
            f"world size {world_size} is not divisible by parallel.tp × parallel.pp = "
            f"{cfg.parallel.tp} × {cfg.parallel.pp}"
        )
    if cfg.parallel.sequence_parallel and (cfg.parallel.tp < 2 or cfg.parallel.pp > 1):
        raise ValueError("parallel.sequence_parallel=true needs parallel.tp > 1 and (for now) parallel.pp=1")
    if cfg.parallel.sequence_parallel and cfg.model.seq_len % cfg.parallel.tp:
        raise ValueError(f"model.seq_len={cfg.model.seq_len} is not divisible by parallel.tp={cfg.parallel.tp} "
                         "(sequence parallelism splits the sequence)")
    dp = world_size // model_parallel
    if cfg.train.global_batch % (cfg.train.micro_batch * dp):
        raise ValueError(
            f"train.global_batch={cfg.train.global_batch} is not divisible by "
            f"train.micro_batch × data-parallel size = {cfg.train.micro_batch} × {dp}"
        )
    if cfg.train.steps < 0 or cfg.train.save_every < 1 or cfg.train.eval_every < 1 or cfg.train.log_every < 1:
        raise ValueError("train.steps must be >= 0 and train.{save,eval,log}_every >= 1")


def to_config(cfg: DictConfig):
    """The typed dataclass behind a Hydra config."""
    return OmegaConf.to_object(cfg)
