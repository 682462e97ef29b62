"""Schema of launchers/sample.py (configs/sample.yaml, configs/sampler/*.yaml), registered with Hydra.

`sampler` is a config group: `sampler=remdm_loop` picks configs/sampler/remdm_loop.yaml. Keys that are
not declared here are rejected by Hydra before anything runs; `validate_sample_config` adds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConfig:
    """One flat schema for every sampler; each sampler reads the fields it needs (SPEC §5)."""

    name: str = "mdlm"
    eta: float = 0.0  # remasking strength: cap σ = min(η, σ_max), rescale σ = η·σ_max, loop σ = η
    t_on: float = 0.55  # loop: remasking phase starts at t_on ...
    t_off: float = 0.05  # ... and ends at t_off
    alpha_on: float = 0.9  # loop: α held here during the remasking phase
    # DSL samplers (dsl_scale/sampling/continuous.py, hybrid.py explain the choices)
    noise_scale: float = 1.0  # g: 1 is the exact localization SDE; 0 makes every position identical
    s_min: float = 1e-2  # first point of the log-spaced SNR grid (after the step from s = 0)
    s_max: float = 100.0  # dsl_continuous: last SNR, where the final argmax is taken
    continuous_steps: int = 8  # dsl_hybrid: continuous steps (of `steps`) before the discrete draft
    draft_snr: float = 20.0  # dsl_hybrid: the SNR the continuous steps reach


@dataclass
class SampleConfig:
    checkpoint: str = "runs/default"
    weights: str = "auto"  # ema | model | auto (EMA when the checkpoint has it)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
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
    """Cross-field checks, each naming the key involved. Raises ValueError."""
    s = cfg.sampler
    if s.name not in known_samplers:
        raise ValueError(f"sampler.name={s.name!r} is not one of {known_samplers}")
    if cfg.steps < 1 or cfg.num_samples < 0 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1 and num_samples >= 0")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"top_p={cfg.top_p} must be in (0, 1]")
    if s.eta < 0:
        raise ValueError(f"sampler.eta={s.eta} must be >= 0")
    if not 0 < s.t_off < s.t_on < 1 or not 0 < s.alpha_on < 1:
        raise ValueError(f"need 0 < sampler.t_off={s.t_off} < sampler.t_on={s.t_on} < 1 and "
                         f"0 < sampler.alpha_on={s.alpha_on} < 1")
    if s.noise_scale < 0 or not 0 < s.s_min < s.s_max or s.draft_snr <= s.s_min:
        raise ValueError(f"need sampler.noise_scale={s.noise_scale} >= 0, 0 < sampler.s_min={s.s_min} < "
                         f"sampler.s_max={s.s_max} and sampler.draft_snr={s.draft_snr} > sampler.s_min")
    if s.name == "dsl_hybrid" and not 1 <= s.continuous_steps < cfg.steps:
        raise ValueError(f"dsl_hybrid needs 1 <= sampler.continuous_steps={s.continuous_steps} < steps={cfg.steps} "
                         "(steps counts the continuous and the discrete steps)")
    if cfg.weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={cfg.weights!r} must be 'auto', 'ema' or 'model'")


def register_sample_configs() -> None:
    ConfigStore.instance().store(name="sample_schema", node=SampleConfig)
