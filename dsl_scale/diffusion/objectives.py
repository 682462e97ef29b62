"""Training objectives as two halves: `prepare` (clean batch → model inputs, with every random draw
seeded from (seed, step, position in the global batch), so the numbers do not depend on the DP size)
and `loss` (logits → scalar). The halves meet on different pipeline stages when PP > 1.

`prepare` draws on the host (seeded CPU generators, `positions` host-side) and returns a batch on the device of
`tokens`: the trainer hands it tokens on its compute device, so every mask, time, SNR and noise tensor the model
and the loss read is there too (on the CPU the moves are no-ops and the numbers are unchanged)."""

from __future__ import annotations

import torch

from dsl_scale.core import seeding
from dsl_scale.core.batch import Prepared
from dsl_scale.diffusion import dsl, mdlm
from dsl_scale.diffusion.schedules import antithetic_times, log_linear_sigma


class MDLMObjective:
    def __init__(self, mask_id: int, eps: float, seed: int):
        self.mask_id = mask_id
        self.eps = eps
        self.seed = seed

    def prepare(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int,
                stream: int) -> Prepared:
        """Antithetic times over the `batch_size` examples sharing `key` (a step), per-example mask noise."""
        positions = positions.cpu()
        u = float(seeding.uniform((), self.seed, stream, key))
        t = antithetic_times(batch_size, u, self.eps)[positions].to(tokens.device)
        noise = torch.stack(
            [seeding.uniform((tokens.shape[1],), self.seed, stream, key, int(p)) for p in positions]
        ).to(tokens.device)
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


class DSLObjective:
    """DSL (SPEC §4): per-sequence SNRs, z = s·K_x + √s·ε, unweighted cross-entropy over all positions."""

    def __init__(self, objective, mask_id: int, vocab_size: int, seed: int):
        self.schedule = dsl.SNRSchedule.from_config(objective)
        self.schedule.validate()
        self.keys = dsl.token_keys(vocab_size, objective.key_dim, objective.key_seed)  # == converter.keys
        self._device_keys = self.keys  # a copy on the device of the last batch (read on every prepare)
        self.mask_id = mask_id
        self.seed = seed

    def keys_on(self, device: torch.device) -> torch.Tensor:
        if self._device_keys.device != device:
            self._device_keys = self.keys.to(device)
        return self._device_keys

    def prepare(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int,
                stream: int) -> Prepared:
        generators = [seeding.generator(self.seed, stream, key, int(p)) for p in positions]
        c = dsl.corrupt(tokens, self.keys_on(tokens.device), self.schedule, self.mask_id, generators)
        return Prepared(c.ids, tokens, None, {"snr": c.snr}, {"z": c.z, "discrete": c.discrete})

    def loss(self, logits: torch.Tensor, batch: Prepared, nll_fn, vocab_start: int) -> torch.Tensor:
        mdlm.suppress_mask_logit_(logits, self.mask_id, vocab_start)
        return dsl.dsl_loss(nll_fn(logits, batch.targets))


def build_objective(objective, mask_id: int, vocab_size: int, seed: int):
    """The objective named by `objective.name` (an ObjectiveConfig)."""
    if objective.name == "mdlm":
        return MDLMObjective(mask_id, objective.eps, seed)
    if objective.name == "ar":
        return AutoregressiveObjective(mask_id)
    if objective.name == "dsl":
        return DSLObjective(objective, mask_id, vocab_size, seed)
    name = objective.name
    raise ValueError(f"unknown objective {name!r}")
