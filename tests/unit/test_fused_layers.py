"""The fused rotary and residual paths (model/layers.py, model/blocks.py) against the separate operations they
replace: rotate-half by chunk, negate and concatenate; dropout mask, gate and residual as separate products."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.model.blocks import DiTBlock, seeded_dropout, seeded_keep_scale
from dsl_scale.model.layers import Rotary, apply_rotary, rotate_half

TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-6}, torch.bfloat16: {"rtol": 2**-7, "atol": 2**-7}}


def unfused_rotary(x: torch.Tensor, seq_len: int, head_dim: int) -> torch.Tensor:
    """The rotary before fusion: angles' cos and sin, x·cos + rotate_half(x)·sin, on [s, b, h, d]."""
    inv_freq = 1.0 / (10_000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = (a[:, None, None, :].to(x.dtype) for a in (angles.cos(), angles.sin()))
    return x * cos + rotate_half(x) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rotary_equals_rotate_half_for_q_and_k_together(dtype):
    seq, batch, heads, head_dim = 9, 2, 3, 8
    qkv = torch.randn(seq, batch, heads, 3, head_dim, generator=torch.Generator().manual_seed(0)).to(dtype)
    cos, sin = Rotary(head_dim).cos_sin(seq)
    q, k = apply_rotary(qkv[:, :, :, :2], cos, sin).unbind(dim=3)
    torch.testing.assert_close(q, unfused_rotary(qkv[:, :, :, 0], seq, head_dim), **TOL[dtype])
    torch.testing.assert_close(k, unfused_rotary(qkv[:, :, :, 1], seq, head_dim), **TOL[dtype])
    # and on a single [s, b, h, d] tensor
    torch.testing.assert_close(apply_rotary(qkv[:, :, :, 2], cos, sin),
                               unfused_rotary(qkv[:, :, :, 2], seq, head_dim), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_residuals_equal_separate_mask_gate_and_sum(dtype):
    g = torch.Generator().manual_seed(1)
    skip, branch = (torch.randn(6, 3, 8, generator=g).to(dtype) for _ in range(2))
    gate = torch.randn(1, 3, 8, generator=g).to(dtype)
    seeds = [11, 12, 13]
    keep = seeded_keep_scale(branch, 0.25, seeds)
    torch.testing.assert_close(DiTBlock.dropped_residual(skip, gate, branch, keep),
                               skip + gate * seeded_dropout(branch, 0.25, seeds), **TOL[dtype])
    torch.testing.assert_close(DiTBlock.gated_residual(skip, gate, branch), skip + gate * branch, **TOL[dtype])
    # the mask is the seeded one: dropped entries are exactly the skip connection
    dropped = keep == 0
    assert 0 < dropped.float().mean() < 0.5
    assert torch.equal(DiTBlock.dropped_residual(skip, gate, branch, keep)[dropped], skip[dropped])
