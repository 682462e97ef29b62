"""Calibration of the denoiser's confidence on partially self-generated drafts (the paper's analysis).

Drafts: a held-out block x, each position masked with probability t (t ~ U[t_low, t_high] per block); one
forward on that, and a fraction `fill` of the masked positions is filled by drawing from the model's own
x_θ: the draft holds clean tokens, the model's own (possibly wrong) tokens and masks, as a sampler's
mid-way state does. A second forward on the draft is scored:
- visible positions: confidence = x_θ's probability of the token present, correct = that token is x's;
- masked positions: confidence = max_v x_θ(v), correct = the argmax is x's token.
"Correct" means "equals the held-out text": a plausible fill that differs counts as wrong.
ECE = Σ_b (n_b / N)·|accuracy_b − mean confidence_b|, with bins `equal-mass` (the default: cut at the
confidence quantiles into `bins` groups of about equal count; equal confidences always share a bin) or
`equal-width` ([0, 1] in `bins` intervals).
The logits are raw x_θ at every position: no SUBS carry-over (see self_correction.py on what that means
for MDLM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_

BINNINGS = ("equal-mass", "equal-width")
Denoiser = Callable[[torch.Tensor], torch.Tensor]  # ids [b, L] → raw logits [b, L, V]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15,
                               binning: str = "equal-mass") -> float:
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError(f"need equal, non-empty confidence and correctness arrays, got {confidence.shape} "
                         f"and {correct.shape}")
    if binning == "equal-mass":
        edges = np.quantile(confidence, np.arange(1, bins) / bins)
        which = np.searchsorted(edges, confidence, side="left")
    elif binning == "equal-width":
        which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    else:
        raise ValueError(f"binning={binning!r} is not one of {BINNINGS}")
    groups = [np.flatnonzero(which == b) for b in range(bins)]
    return float(sum(len(g) * abs(correct[g].mean() - confidence[g].mean()) for g in groups if len(g))
                 / confidence.size)


def summary(confidence: np.ndarray, correct: np.ndarray, bins: int, binning: str) -> dict[str, Any]:
    if confidence.size == 0:
        return {"ece": None, "count": 0}
    return {"ece": expected_calibration_error(confidence, correct, bins, binning),
            "mean_confidence": float(confidence.mean()), "accuracy": float(np.mean(correct)),
            "count": int(confidence.size)}


def score_draft(logits: torch.Tensor, draft: torch.Tensor, original: torch.Tensor,
                mask_id: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(confidence, correct) arrays at the draft's visible and masked positions."""
    probs = torch.softmax(suppress_mask_logit_(logits.double().clone(), mask_id), dim=-1)
    masked = draft == mask_id
    present = probs.gather(-1, torch.where(masked, original, draft)[..., None]).squeeze(-1)
    top, argmax = probs.max(dim=-1)
    return {"visible": (present[~masked].numpy(), (draft == original)[~masked].numpy()),
            "masked": (top[masked].numpy(), (argmax == original)[masked].numpy())}


def make_drafts(denoise: Denoiser, blocks: torch.Tensor, mask_id: int, generator: torch.Generator,
                t_low: float, t_high: float, fill: float) -> torch.Tensor:
    """Partially self-generated drafts of `blocks` [n, L] (one forward), as described in the module doc."""
    n, length = blocks.shape
    t = t_low + (t_high - t_low) * torch.rand(n, 1, generator=generator, dtype=torch.float64, device="cpu")
    masked = torch.rand(n, length, generator=generator, dtype=torch.float64, device="cpu") < t
    z = torch.where(masked, mask_id, blocks)
    probs = torch.softmax(suppress_mask_logit_(denoise(z).double(), mask_id), dim=-1)
    drawn = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(n, length)
    filled = masked & (torch.rand(n, length, generator=generator, dtype=torch.float64, device="cpu") < fill)
    return torch.where(filled, drawn, z)


def draft_calibration(denoise: Denoiser, blocks: torch.Tensor, mask_id: int, seed: int = 0, t_low: float = 0.1,
                      t_high: float = 0.9, fill: float = 0.5, bins: int = 15, binning: str = "equal-mass",
                      batch_size: int = 16) -> dict[str, Any]:
    """ECE at visible and at masked positions of drafts of `blocks` (two forwards per block)."""
    if not (0 <= t_low <= t_high <= 1 and 0 <= fill <= 1):
        raise ValueError(f"need 0 <= t_low <= t_high <= 1 and 0 <= fill <= 1, got {t_low}, {t_high}, {fill}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"visible": [], "masked": []}
    for start in range(0, len(blocks), batch_size):
        original = blocks[start:start + batch_size]
        draft = make_drafts(denoise, original, mask_id, generator, t_low, t_high, fill)
        for where, pair in score_draft(denoise(draft), draft, original, mask_id).items():
            parts[where].append(pair)
    result: dict[str, Any] = {}
    for where, pairs in parts.items():
        confidence = np.concatenate([c for c, _ in pairs])
        correct = np.concatenate([k for _, k in pairs])
        result[where] = summary(confidence, correct, bins, binning)
    result["settings"] = {"blocks": len(blocks), "mask_rate": [t_low, t_high], "fill": fill, "bins": bins,
                          "binning": binning, "seed": seed,
                          "confidence": "visible: p(token present); masked: max_v p(v)",
                          "draft": "held-out block masked at t ~ U[mask_rate], a `fill` fraction of the masks "
                                   "filled from the model's own x_theta"}
    return result
