"""bf16 inference casts the parameters only: the buffers keep their dtype, as in training, so the rotary angles
(from fp32 frequencies) are those of fp32 inference, and DSL's keys stay fp32 and unit-norm."""

from __future__ import annotations

import torch

from dsl_scale.checkpoint.inference import place
from dsl_scale.config import ModelConfig, ObjectiveConfig
from dsl_scale.model.factory import build_dit

MODEL = ModelConfig(hidden=64, n_heads=1, cond_dim=16, n_blocks=1, seq_len=16)


def test_bf16_inference_keeps_fp32_buffers_and_the_rotary_angles_of_fp32(process_group):
    fp32 = place(build_dit(MODEL, 64, 1, objective=ObjectiveConfig("dsl", key_dim=8)), torch.device("cpu"),
                 torch.float32)
    bf16 = place(build_dit(MODEL, 64, 1, objective=ObjectiveConfig("dsl", key_dim=8)), torch.device("cpu"),
                 torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {n: b.dtype for n, b in bf16.named_buffers()} == {n: b.dtype for n, b in fp32.named_buffers()}
    assert bf16.converter.keys.dtype == torch.float32
    length = 1024
    (cos32, sin32), (cos16, sin16) = fp32.rotary_emb.cos_sin(length), bf16.rotary_emb.cos_sin(length)
    angles32, angles16 = torch.atan2(sin32, cos32), torch.atan2(sin16, cos16)
    error = (torch.remainder(angles16 - angles32 + torch.pi, 2 * torch.pi) - torch.pi).abs().max().item()
    assert error == 0.0, f"bf16 inference's rotary angles are off by up to {error:.3f} rad at L = {length}"
    assert torch.equal(cos16, cos32) and torch.equal(sin16, sin32)
