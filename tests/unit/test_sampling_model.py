"""The real DiT as a sampler's denoiser: a sample does not depend on its batch (one forward per sequence)."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.config import ModelConfig
from dsl_scale.model.factory import build_dit
from dsl_scale.sampling.config import SamplerConfig
from dsl_scale.sampling.denoiser import ModelDenoiser
from dsl_scale.sampling.generate import sample
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)

VOCAB, MASK = 1000, 999  # a small vocabulary keeps the test fast; the fix does not depend on V


def micro(time_conditioning: bool = False):
    cfg = ModelConfig(name="micro", hidden=32, n_blocks=2, n_heads=2, cond_dim=16, seq_len=32,
                      time_conditioning=time_conditioning)
    model = build_dit(cfg, VOCAB, seed=0)
    with torch.no_grad():  # the zero-initialised output layer would make x_θ uniform
        model.output_layer.linear.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return model


def test_real_model_samples_do_not_depend_on_the_batch(process_group):
    denoise = ModelDenoiser(micro())
    cfg = SamplerConfig(name="remdm_loop", eta=0.1)
    run = lambda indices: sample(denoise, indices, 32, 8, MASK, seed=3, sampler=cfg)
    together, alone, reordered = run([0, 1, 2]), run([1]), run([2, 0])
    assert torch.equal(alone.tokens[0], together.tokens[1]) and alone.nfe[0] == together.nfe[1]
    assert torch.equal(reordered.tokens, together.tokens[[2, 0]]) and reordered.nfe == together.nfe[2::-2]
    assert not (together.tokens == MASK).any()


def test_time_conditioned_models_are_refused(process_group):
    with pytest.raises(NotImplementedError, match="time-conditioned"):
        ModelDenoiser(micro(time_conditioning=True))
