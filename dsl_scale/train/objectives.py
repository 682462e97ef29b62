"""Training objectives as (model, clean batch, positions) → loss, with every random draw seeded from
(seed, step, position in the global batch) so the numbers do not depend on the DP size."""

from __future__ import annotations

import torch

from dsl_scale.diffusion import mdlm
from dsl_scale.diffusion.schedules import antithetic_times, log_linear_sigma
from dsl_scale.train import seeding


class MDLMObjective:
    def __init__(self, mask_id: int, eps: float, seed: int):
        self.mask_id = mask_id
        self.eps = eps
        self.seed = seed

    def draw(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int, stream: int):
        """Antithetic times over the `batch_size` examples sharing `key` (a step), per-example mask noise."""
        u = float(seeding.uniform((), self.seed, stream, key))
        t_all = antithetic_times(batch_size, u, self.eps)
        t = t_all[positions]
        noise = torch.stack(
            [seeding.uniform((tokens.shape[1],), self.seed, stream, key, int(p)) for p in positions]
        )
        z, masked = mdlm.mask_tokens(tokens, t, noise, self.mask_id, self.eps)
        return z, masked, t

    def loss(self, model, nll_fn, vocab_start: int, tokens, positions, key, batch_size, stream):
        z, masked, t = self.draw(tokens, positions, key, batch_size, stream)
        logits = model(z, log_linear_sigma(t, self.eps).float())
        mdlm.suppress_mask_logit_(logits, self.mask_id, vocab_start)
        nll = nll_fn(logits, tokens)
        return mdlm.mdlm_loss(nll, masked.to(tokens.device), t.to(nll.device), self.eps)


class AutoregressiveObjective:
    """The AR baseline: the same stack with causal attention, next-token cross-entropy per token."""

    def __init__(self, mask_id: int):
        self.mask_id = mask_id

    def loss(self, model, nll_fn, vocab_start: int, tokens, positions, key, batch_size, stream):
        logits = model(tokens[:, :-1])
        mdlm.suppress_mask_logit_(logits, self.mask_id, vocab_start)
        return nll_fn(logits, tokens[:, 1:]).mean()


def build_objective(name: str, mask_id: int, eps: float, seed: int):
    if name == "mdlm":
        return MDLMObjective(mask_id, eps, seed)
    if name == "ar":
        return AutoregressiveObjective(mask_id)
    raise ValueError(f"unknown objective {name!r}")
