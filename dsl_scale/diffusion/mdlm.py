"""MDLM: absorbing-state masked diffusion with the SUBS parameterisation (docs/method.md §3). Pure tensor code."""

from __future__ import annotations

import torch

from dsl_scale.diffusion.schedules import log_linear_alpha, log_linear_alpha_derivative

NEG_INF = -1e6


def mask_tokens(x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, mask_id: int, eps: float = 1e-3):
    """Forward process: each token becomes [MASK] with probability 1 − α_t.

    x: [b, L] ids; t: [b] times; noise: [b, L] uniforms in [0, 1). Returns (z_t, masked bool [b, L]).
    """
    move_chance = 1 - log_linear_alpha(t, eps)
    masked = noise < move_chance.to(noise.dtype)[:, None]
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def suppress_mask_logit_(logits: torch.Tensor, mask_id: int, vocab_start: int = 0) -> torch.Tensor:
    """SUBS, part 1: the [MASK] logit gets −∞ (in place) so the model never predicts [MASK].

    `logits` may be this rank's vocab-parallel shard covering ids [vocab_start, vocab_start + V_local).
    """
    local = mask_id - vocab_start
    if 0 <= local < logits.shape[-1]:
        logits[..., local] = NEG_INF
    return logits


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Full SUBS log-probabilities on unsharded logits: [MASK] suppressed, unmasked positions carried over."""
    logits = suppress_mask_logit_(logits.float().clone(), mask_id)
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    carried = torch.full_like(log_probs, NEG_INF).scatter_(-1, z[..., None], 0.0)
    return torch.where((z != mask_id)[..., None], carried, log_probs)


def loss_weight(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """−α'_t / (1 − α_t): the continuous-time NELBO weight, 1/t for the log-linear schedule."""
    return -log_linear_alpha_derivative(t, eps) / (1 - log_linear_alpha(t, eps))


def mdlm_loss(nll: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """NELBO per token: weight(t) · −log x_θ[x] summed over masked positions, averaged over all tokens.

    nll: [b, L] per-token −log p under SUBS logits; unmasked positions contribute 0 (SUBS carries them).
    """
    per_token = nll * masked.to(nll.dtype) * loss_weight(t, eps).to(nll.dtype)[:, None]
    return per_token.mean()
