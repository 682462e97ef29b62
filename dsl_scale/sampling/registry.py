"""Sampler names → sampling functions: the one place a new sampler is plugged in.

A sampler function has the signature of `generate.sample`: (denoise, indices, seq_len, steps, mask_id,
seed, sampler_config, top_p) → SampleResult, and must draw every random number of sample i from
(seed, i) only. The DSL samplers (docs/method.md §5) need a denoiser that also takes continuous inputs z
(ModelDenoiser.from_z, through the DSL converter), which is why the denoiser is passed in.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dsl_scale.sampling.autoregressive import sample_ar
from dsl_scale.sampling.continuous import sample_dsl_continuous
from dsl_scale.sampling.generate import SampleResult, sample
from dsl_scale.sampling.hybrid import sample_dsl_hybrid
from dsl_scale.sampling.schedules import SCHEDULES
from dsl_scale.sampling.unmask import sample_confidence_unmask

SamplerFn = Callable[..., SampleResult]

_SAMPLERS: dict[str, SamplerFn] = {name: sample for name in SCHEDULES}
_SAMPLERS.update(dsl_continuous=sample_dsl_continuous, dsl_hybrid=sample_dsl_hybrid, ar=sample_ar,
                 confidence_unmask=sample_confidence_unmask)
_NEED_CONVERTER = {"dsl_continuous", "dsl_hybrid"}


def sampler_names() -> tuple[str, ...]:
    return tuple(_SAMPLERS)


def get_sampler(name: str) -> SamplerFn:
    if name not in _SAMPLERS:
        raise ValueError(f"sampler={name!r} is not one of {sampler_names()}")
    return _SAMPLERS[name]


def check_model_fits(name: str, model: nn.Module, checkpoint: str, visible_snr: float | None = None) -> None:
    """The DSL samplers, and any sampler given visible_snr, feed z through DSL's converter: refuse a
    checkpoint without one, by name. The ar sampler needs a causal (objective=ar) checkpoint, and only it can
    sample one."""
    causal = bool(getattr(getattr(model, "cfg", None), "causal", False))
    if (name == "ar") != causal:
        raise ValueError(f"sampler={name} cannot sample checkpoint={checkpoint}: "
                         + ("sampler=ar needs an objective=ar (causal) checkpoint" if name == "ar" else
                            "it is an objective=ar (causal) checkpoint; use sampler=ar"))
    if name in _NEED_CONVERTER and not hasattr(model, "converter"):
        raise ValueError(f"sampler={name} needs a DSL checkpoint (a DiT with a converter), but checkpoint="
                         f"{checkpoint} has none (an MDLM run?); use a discrete sampler or a DSL run")
    if visible_snr is not None and not hasattr(model, "converter"):
        raise ValueError(f"sampler.visible_snr={visible_snr} feeds tokens through DSL's converter, but checkpoint="
                         f"{checkpoint} has none (an MDLM run?); leave sampler.visible_snr null")
