"""Schema of launchers/sample.py (configs/sample.yaml, configs/sampler/*.yaml), registered with Hydra.

`sampler` is a config group: `sampler=remdm_loop` picks configs/sampler/remdm_loop.yaml, composed over
that sampler's own schema (SAMPLER_SCHEMAS, stored as sampler_schema/NAME), so a field the chosen
sampler does not read (`sampler=mdlm sampler.eta=0.1`) is rejected by Hydra, like any unknown key, before
anything runs; `validate_sample_config` adds the rest. `SamplerConfig` holds every sampler's fields at
once, for code that builds a sampler config by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from dsl_scale.config import check_choices, choice


@dataclass
class SamplerSchema:
    """mdlm and remdm_conf: the name only (SPEC §5)."""

    name: str = "mdlm"


@dataclass
class RemaskingSampler(SamplerSchema):
    """remdm_cap, remdm_rescale: remasking strength η."""

    eta: float = 0.0  # remasking strength: cap σ = min(η, σ_max), rescale σ = η·σ_max, loop σ = η


@dataclass
class LoopSampler(RemaskingSampler):
    """remdm_loop."""

    t_on: float = 0.55  # loop: remasking phase starts at t_on ...
    t_off: float = 0.05  # ... and ends at t_off
    alpha_on: float = 0.9  # loop: α held here during the remasking phase


@dataclass
class LocalizationPath:
    """The DSL samplers' SDE path (dsl_scale/sampling/continuous.py, hybrid.py explain the choices)."""

    noise_scale: float = 1.0  # g: 1 is the exact localization SDE; 0 makes every position identical
    s_min: float = 1e-2  # first point of the log-spaced SNR grid (after the step from s = 0)


@dataclass
class ContinuousSampler(LocalizationPath, SamplerSchema):
    """dsl_continuous."""

    s_max: float = 100.0  # dsl_continuous: last SNR, where the final argmax is taken


@dataclass
class HybridSampler(LocalizationPath, LoopSampler):
    """dsl_hybrid: the continuous path up to draft_snr, then remdm_loop from t_on."""

    continuous_steps: int = 8  # dsl_hybrid: continuous steps (of `steps`) before the discrete draft
    draft_snr: float = 20.0  # dsl_hybrid: the SNR the continuous steps reach


SAMPLER_SCHEMAS: dict[str, type[SamplerSchema]] = {
    "mdlm": SamplerSchema, "remdm_conf": SamplerSchema, "remdm_cap": RemaskingSampler,
    "remdm_rescale": RemaskingSampler, "remdm_loop": LoopSampler, "dsl_continuous": ContinuousSampler,
    "dsl_hybrid": HybridSampler,
}


@dataclass
class SamplerConfig(HybridSampler, ContinuousSampler):
    """Every sampler's fields in one (each sampler reads those it needs), for configs built in code."""

    name: str = "mdlm"


@dataclass
class SampleConfig:
    checkpoint: str = "runs/default"
    weights: str = choice("auto", "auto", "ema", "model")  # auto: EMA when the checkpoint has it
    sampler: SamplerSchema = field(default_factory=SamplerSchema)
    steps: int = 64
    num_samples: int = 4
    batch_size: int = 4
    top_p: float = 0.9
    seed: int = 0
    out: str = "samples.jsonl"
    # One forward per sequence: a sample's logits then do not depend on which sequences share its
    # batch (CPU GEMMs round rows differently at different batch sizes). false: faster on GPU.
    batch_invariant: bool = True
    print_samples: int = 0  # echo this many decoded samples to stdout


def validate_sample_config(cfg: SampleConfig, known_samplers: tuple[str, ...]) -> None:
    """Cross-field checks, each naming the key involved; a sampler's fields are checked where it has them.
    Raises ValueError."""
    s = cfg.sampler
    if s.name not in known_samplers:
        raise ValueError(f"sampler.name={s.name!r} is not one of {known_samplers}")
    schema = SAMPLER_SCHEMAS.get(s.name)
    if schema is not None and type(s) not in (schema, SamplerConfig):
        raise ValueError(f"sampler.name={s.name!r} does not fit the fields of the sampler chosen "
                         f"({type(s).__name__}); pick it with sampler={s.name}")
    check_choices(cfg)
    if cfg.steps < 1 or cfg.num_samples < 0 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1 and num_samples >= 0")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"top_p={cfg.top_p} must be in (0, 1]")
    if isinstance(s, RemaskingSampler) and s.eta < 0:
        raise ValueError(f"sampler.eta={s.eta} must be >= 0")
    if isinstance(s, LoopSampler) and (not 0 < s.t_off < s.t_on < 1 or not 0 < s.alpha_on < 1):
        raise ValueError(f"need 0 < sampler.t_off={s.t_off} < sampler.t_on={s.t_on} < 1 and "
                         f"0 < sampler.alpha_on={s.alpha_on} < 1")
    if isinstance(s, LocalizationPath):
        tops = {k: getattr(s, k) for k in ("s_max", "draft_snr") if hasattr(s, k)}  # the grid's last SNR
        if s.noise_scale < 0 or not 0 < s.s_min < min(tops.values()):
            raise ValueError(f"need sampler.noise_scale={s.noise_scale} >= 0 and 0 < sampler.s_min={s.s_min} < "
                             + " and < ".join(f"sampler.{k}={v}" for k, v in tops.items()))
    if s.name == "dsl_hybrid" and not 1 <= s.continuous_steps < cfg.steps:
        raise ValueError(f"dsl_hybrid needs 1 <= sampler.continuous_steps={s.continuous_steps} < steps={cfg.steps} "
                         "(steps counts the continuous and the discrete steps)")


def register_sample_configs() -> None:
    """The schema configs/sample.yaml composes: `sampler` is left open for sampler_schema/NAME (the schema
    of the chosen sampler, picked by interpolation in sample.yaml's defaults list)."""
    store = ConfigStore.instance()
    schema = OmegaConf.structured(SampleConfig)
    schema.sampler = MISSING
    store.store(name="sample_schema", node=schema)
    for name, cls in SAMPLER_SCHEMAS.items():
        store.store(group="sampler_schema", name=name, node=cls(name=name))
