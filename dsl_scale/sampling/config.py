"""Schema of launchers/sample.py (configs/sample.yaml, configs/sampler/*.yaml), registered with Hydra.

`sampler` is a config group: `sampler=remdm_loop` picks configs/sampler/remdm_loop.yaml, composed over
that sampler's own schema (SAMPLER_SCHEMAS, stored as sampler_schema/NAME), so a field the chosen
sampler does not read (`sampler=mdlm sampler.eta=0.1`) is rejected by Hydra, like any unknown key, before
anything runs; `validate_sample_config` adds the rest. `SamplerConfig` holds every sampler's fields at
once, for code that builds a sampler config by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from dsl_scale.config import check_choices, choice


@dataclass
class SamplerSchema:
    """mdlm and remdm_conf: the name and the nucleus rule (docs/method.md §5)."""

    name: str = "mdlm"
    # top-p rule (sampling/steps.py): reference = kuleshov-group/remdm's (cumulative mass ≤ p, plus the
    # top-1); crossing = also the token that crosses p (the smallest set whose mass reaches p)
    nucleus: str = choice("reference", "reference", "crossing")
    # every token draw reads softmax(logits / temperature) (then the nucleus); 1 = the model's own x_θ. The
    # model's confidence that remasking and unmasking orders read stays the untempered softmax.
    temperature: float = 1.0


@dataclass
class ConfidenceUnmaskSampler(SamplerSchema):
    """confidence_unmask (sampling/unmask.py): LLaDA's low-confidence rule, as fengsxy/DSL-LLaDA's "standard"
    decoder runs it: each step draws x0 at every masked position (argmax at temperature 0), then unmasks the
    k most confident of them; a visible token is never revisited."""

    temperature: float = 0.0  # 0: greedy (LLaDA's and DSL-LLaDA's setting); > 0: x0 ~ softmax(logits/τ)
    # DSL checkpoints: feed visible tokens through the converter at this SNR (sampling/visible_channel.py)
    visible_snr: float | None = None


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
class ConfidenceSampler(LoopSampler):
    """remdm_confidence: remdm_loop's α schedule and remasking budget η, σ per visible token from the
    model's current confidence in it (sampling/schedules.py)."""

    # DSL checkpoints: feed visible tokens through the converter as z = visible_snr·K_x and [MASK] as z = 0
    # (sampling/visible_channel.py, as fengsxy/DSL-LLaDA decodes); null: the embedding table, any checkpoint
    visible_snr: float | None = None


@dataclass
class LocalizationPath:
    """The DSL samplers' SDE path (dsl_scale/sampling/continuous.py, hybrid.py explain the choices)."""

    noise_scale: float = 1.0  # g: 1 is the exact localization SDE; 0 makes every position identical
    # first point of the log-spaced SNR grid (after the step from s = 0); null: where the posterior starts
    # to move, from the keys (continuous.snr_window: 1/(2‖K‖²))
    s_min: float | None = None


@dataclass
class ContinuousSampler(LocalizationPath, SamplerSchema):
    """dsl_continuous. The last four fields give fengsxy/DSL-LLaDA's SDE settings as options
    (configs/sampler/dsl_llada_sde.yaml; sampling/continuous.py)."""

    # last SNR, where the final argmax is taken; null: where the posterior has settled (continuous.snr_window)
    s_max: float | None = None
    # log: T log-spaced SNRs over [s_min, s_max]; dsl_llada: DSL-LLaDA's "sensitive" schedule (5 % of the steps
    # log-spaced over [0.01, 7], 90 % over [7, 74], the rest over [74, 100]; s_min / s_max are not read)
    snr_schedule: str = choice("log", "log", "dsl_llada")
    # fixed: g = noise_scale; dsl_llada: g from the NFE as DSL-LLaDA's adaptive rule sets it (0.1 at NFE <= 8,
    # 0.05 <= 16, 0.01 <= 32, else 0.005)
    noise_rule: str = choice("fixed", "fixed", "dsl_llada")
    x_hat_top_k: int = 0  # > 0: x̂ over the k most probable tokens, renormalised (DSL-LLaDA: 512), not top-p
    beta_scale: float = 1.0  # the converter's β times this at inference (DSL-LLaDA: 2 × its trained β)


@dataclass
class HybridSampler(LocalizationPath, LoopSampler):
    """dsl_hybrid: the continuous path up to draft_snr, then remdm_loop from t_on."""

    continuous_steps: int = 8  # dsl_hybrid: continuous steps (of `steps`) before the discrete draft
    draft_snr: float = 20.0  # dsl_hybrid: the SNR the continuous steps reach


@dataclass
class ARSampler(SamplerSchema):
    """ar: ancestral left-to-right sampling of an objective=ar checkpoint (sampling/autoregressive.py); `steps`
    is not read (NFE = L − 1 per sequence, no KV cache)."""


SAMPLER_SCHEMAS: dict[str, type[SamplerSchema]] = {
    "ar": ARSampler, "confidence_unmask": ConfidenceUnmaskSampler,
    "mdlm": SamplerSchema, "remdm_conf": SamplerSchema, "remdm_cap": RemaskingSampler,
    "remdm_rescale": RemaskingSampler, "remdm_loop": LoopSampler, "dsl_continuous": ContinuousSampler,
    "dsl_hybrid": HybridSampler, "remdm_confidence": ConfidenceSampler,
}


# Named settings of a sampler (configs/sampler/PRESET.yaml sets `name` to the sampler it configures): the preset
# name is composed over that sampler's schema.
SAMPLER_PRESETS: dict[str, str] = {"remdm_loop_short": "remdm_loop", "dsl_llada_sde": "dsl_continuous"}


@dataclass
class SamplerConfig(HybridSampler, ContinuousSampler, ConfidenceSampler):
    """Every sampler's fields in one (each sampler reads those it needs), for configs built in code."""

    name: str = "mdlm"
    temperature: float = 1.0


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
    # true: one forward per sequence, so a sample's logits do not depend on which sequences share its batch
    # (GEMMs round rows differently at different batch sizes); false: one forward per batch; auto: per
    # sequence on CPU (as fast there), batched on an accelerator (sampling/denoiser.py).
    batch_invariant: bool | str = "auto"
    precision: str = choice("auto", "auto", "fp32", "bf16")  # the model's dtype; auto: bf16 on GPU, fp32 on CPU
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
    if not (isinstance(cfg.batch_invariant, bool) or cfg.batch_invariant == "auto"):
        raise ValueError(f"batch_invariant={cfg.batch_invariant!r} must be true, false or auto")
    if cfg.steps < 1 or cfg.num_samples < 0 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1 and num_samples >= 0")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"top_p={cfg.top_p} must be in (0, 1]")
    temperature = getattr(s, "temperature", 1.0)
    if temperature < 0 or (temperature == 0 and s.name != "confidence_unmask"):
        raise ValueError(f"sampler.temperature={temperature} must be > 0 (0, greedy, only for confidence_unmask)")
    if isinstance(s, ContinuousSampler) and (s.x_hat_top_k < 0 or not s.beta_scale > 0):
        raise ValueError(f"need sampler.x_hat_top_k={s.x_hat_top_k} >= 0 and sampler.beta_scale={s.beta_scale} > 0")
    if isinstance(s, RemaskingSampler) and s.eta < 0:
        raise ValueError(f"sampler.eta={s.eta} must be >= 0")
    if isinstance(s, LoopSampler) and (not 0 < s.t_off < s.t_on < 1 or not 0 < s.alpha_on < 1):
        raise ValueError(f"need 0 < sampler.t_off={s.t_off} < sampler.t_on={s.t_on} < 1 and "
                         f"0 < sampler.alpha_on={s.alpha_on} < 1")
    if isinstance(s, LoopSampler) and s.eta > (1 - s.alpha_on) / s.alpha_on:
        raise ValueError(f"sampler.eta={s.eta} must be <= (1 - alpha_on)/alpha_on = "
                         f"{(1 - s.alpha_on) / s.alpha_on:.4g}: above it the loop's remasking step at "
                         "α = alpha_on is not a distribution")
    if getattr(s, "visible_snr", None) is not None and not s.visible_snr > 0:
        raise ValueError(f"sampler.visible_snr={s.visible_snr} must be > 0 (or null: the embedding table)")
    if isinstance(s, LocalizationPath):
        tops = {k: getattr(s, k) for k in ("s_max", "draft_snr") if getattr(s, k, None) is not None}
        if s.noise_scale < 0 or (s.s_min is not None and not 0 < s.s_min < min(tops.values(), default=math.inf)):
            raise ValueError(f"need sampler.noise_scale={s.noise_scale} >= 0 and 0 < sampler.s_min={s.s_min} < "
                             + " and < ".join(f"sampler.{k}={v}" for k, v in tops.items()))
        if any(v <= 0 for v in tops.values()):
            raise ValueError(f"the last SNR must be > 0: {tops}")
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
    for preset, name in SAMPLER_PRESETS.items():
        store.store(group="sampler_schema", name=preset, node=SAMPLER_SCHEMAS[name](name=name))
