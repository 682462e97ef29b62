"""Training objectives as two halves: `prepare` (clean batch → model inputs, with every random draw
seeded from (seed, step, position in the global batch), so the numbers do not depend on the DP size)
and `loss` (logits → scalar). The halves meet on different pipeline stages when PP > 1."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsl_scale.diffusion import mdlm
from dsl_scale.diffusion.schedules import antithetic_times, log_linear_sigma
from dsl_scale.train import seeding


@dataclass
class Prepared:
    inputs: torch.Tensor  # token ids the model reads, [b, s]
    targets: torch.Tensor  # [b, s]
    sigma: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class MDLMObjective:
    def __init__(self, mask_id: int, eps: float, seed: int):
        self.mask_id = mask_id
        self.eps = eps
        self.seed = seed

    def prepare(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int,
                stream: int) -> Prepared:
        """Antithetic times over the `batch_size` examples sharing `key` (a step), per-example mask noise."""
        u = float(seeding.uniform((), self.seed, stream, key))
        t = antithetic_times(batch_size, u, self.eps)[positions]
        noise = torch.stack(
            [seeding.uniform((tokens.shape[1],), self.seed, stream, key, int(p)) for p in positions]
        )
        z, masked = mdlm.mask_tokens(tokens, t, noise, self.mask_id, self.eps)
        sigma = log_linear_sigma(t, self.eps).float()
        return Prepared(z, tokens, sigma, {"masked": masked, "t": t})

    def loss(self, logits: torch.Tensor, batch: Prepared, nll_fn, vocab_start: int) -> torch.Tensor:
        mdlm.suppress_mask_logit_(logits, self.mask_id, vocab_start)
        nll = nll_fn(logits, batch.targets)
        return mdlm.mdlm_loss(nll, batch.extras["masked"], batch.extras["t"].to(nll.device), self.eps)


class AutoregressiveObjective:
    """The AR baseline: the same stack with causal attention, next-token cross-entropy per token."""

    def __init__(self, mask_id: int):
        self.mask_id = mask_id

    def prepare(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int,
                stream: int) -> Prepared:
        return Prepared(tokens[:, :-1], tokens[:, 1:])

    def loss(self, logits: torch.Tensor, batch: Prepared, nll_fn, vocab_start: int) -> torch.Tensor:
        mdlm.suppress_mask_logit_(logits, self.mask_id, vocab_start)
        return nll_fn(logits, batch.targets).mean()


def build_objective(name: str, mask_id: int, eps: float, seed: int):
    if name == "mdlm":
        return MDLMObjective(mask_id, eps, seed)
    if name == "ar":
        return AutoregressiveObjective(mask_id)
    raise ValueError(f"unknown objective {name!r}")
