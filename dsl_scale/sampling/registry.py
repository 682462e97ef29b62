"""Sampler names → sampling functions: the one place a new sampler is plugged in.

A sampler function has the signature of `generate.sample`: (denoise, indices, seq_len, steps, mask_id,
seed, sampler_config, top_p) → SampleResult, and must draw every random number of sample i from
(seed, i) only. The DSL continuous and hybrid samplers (SPEC §5) will register here once the DSL
model exists; they need a denoiser that also accepts continuous inputs z (DiT's `input_embeds` via the
DSL converter), which is why the denoiser is passed in rather than built here.
"""

from __future__ import annotations

from collections.abc import Callable

from dsl_scale.sampling.generate import SampleResult, sample
from dsl_scale.sampling.schedules import SCHEDULES

SamplerFn = Callable[..., SampleResult]

_SAMPLERS: dict[str, SamplerFn] = {name: sample for name in SCHEDULES}


def register_sampler(name: str, fn: SamplerFn) -> None:
    if name in _SAMPLERS:
        raise ValueError(f"sampler {name!r} is already registered")
    _SAMPLERS[name] = fn


def sampler_names() -> tuple[str, ...]:
    return tuple(_SAMPLERS)


def get_sampler(name: str) -> SamplerFn:
    if name not in _SAMPLERS:
        raise ValueError(f"sampler={name!r} is not one of {sampler_names()}")
    return _SAMPLERS[name]
