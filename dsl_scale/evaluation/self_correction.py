"""Self-correction (the paper's analysis): corrupt a fraction k of a held-out block's inner tokens (the
BOS/EOS frame is kept) uniformly at random, each to a uniformly drawn other id ([MASK] never), run one
forward pass, and count
- `repaired`: corrupted positions whose argmax (over raw x_θ, [MASK] excluded) is the original token;
- `broken`: clean positions whose argmax is not their (original) token.

What MDLM can do here: its loss never scores visible positions (SUBS copies them, in the loss and in the
sampler), so its logits there were never trained; whatever they predict, its samplers never use them. The
figures below read raw x_θ for both models to show what each network learnt, not what its sampler does.
DSL trains every position (cross-entropy over all of them): on the embedding-table path (what the
discrete samplers feed) it only saw clean tokens and [MASK]; with `visible_snr` > 0 the visible tokens go
through its converter as observations at SNR s (z = s·K_x, masked positions z = 0: exactly what
`sampler.visible_snr` feeds the samplers), which is where it learnt to doubt its input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.evaluation.bootstrap import bootstrap_mean
from dsl_scale.evaluation.calibration import Denoiser


def corrupt(blocks: torch.Tensor, rate: float, vocab_size: int, mask_id: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted ids, corrupted-position mask): round(rate · (L − 2)) inner positions per block, each
    replaced by a uniform id other than itself and [MASK] (the last id)."""
    if mask_id != vocab_size - 1:
        raise ValueError(f"corrupt() expects [MASK] to be the last id ({vocab_size - 1}), got {mask_id}")
    if not 0 < rate <= 1:
        raise ValueError(f"corruption rate must lie in (0, 1], got {rate}")
    n, length = blocks.shape
    count = max(1, round(rate * (length - 2)))
    scores = torch.rand(n, length - 2, generator=generator, dtype=torch.float64, device="cpu")
    chosen = torch.zeros(n, length, dtype=torch.bool, device="cpu")
    chosen[:, 1:-1].scatter_(1, scores.argsort(dim=1)[:, :count], True)
    # Uniform over the V − 2 ids that are neither [MASK] nor the original: draw r < V − 2, skip the original.
    r = torch.randint(0, vocab_size - 2, (n, length), generator=generator, device="cpu")
    replacement = r + (r >= blocks).long()
    return torch.where(chosen, replacement, blocks), chosen


def self_correction(denoise: Denoiser, blocks: torch.Tensor, vocab_size: int, mask_id: int, rate: float = 0.1,
                    seed: int = 0, batch_size: int = 16, resamples: int = 1000) -> dict[str, Any]:
    """Fractions repaired and broken by one forward pass (per-block fractions, bootstrap over blocks)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    repaired, broken = [], []
    for start in range(0, len(blocks), batch_size):
        original = blocks[start:start + batch_size]
        corrupted, chosen = corrupt(original, rate, vocab_size, mask_id, generator)
        logits = suppress_mask_logit_(denoise(corrupted).float().clone(), mask_id)
        right = logits.argmax(dim=-1) == original
        inner = torch.zeros_like(chosen)
        inner[:, 1:-1] = True
        clean = inner & ~chosen
        repaired += ((right & chosen).sum(1) / chosen.sum(1)).tolist()
        broken += ((~right & clean).sum(1) / clean.sum(1).clamp(min=1)).tolist()
    fixed, damaged = bootstrap_mean(np.array(repaired), resamples, seed), bootstrap_mean(np.array(broken),
                                                                                       resamples, seed)
    return {"repaired": fixed["mean"], "repaired_ci95": fixed["ci95"], "broken": damaged["mean"],
            "broken_ci95": damaged["ci95"], "rate": rate, "blocks": len(blocks), "seed": seed,
            "forward_passes": 1, "argmax": "raw x_theta, [MASK] excluded, no SUBS carry-over"}
