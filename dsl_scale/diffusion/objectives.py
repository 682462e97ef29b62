"""Training objectives as two halves: `prepare` (clean batch → model inputs, with every random draw a pure
function of (seed, stream, step, position in the global batch), so the numbers do not depend on the DP size and
a resumed run redraws them exactly) and `loss` (logits → scalar). The halves meet on different pipeline stages
when PP > 1.
`loss(logits, batch, nll_fn, vocab_start)`: `nll_fn(logits, targets, suppressed)` gives per-token NLLs of this
rank's vocab-parallel logits with local column `suppressed` (the [MASK] id − `vocab_start`) held at SUBS's −∞
(DiT.token_nll, or the trainer's chunked parallel/cross_entropy.py); the logits are left unmodified.

`prepare` draws with the counter-based generator (core/counter_rng.py) directly on the device of `tokens`, a
fixed batch of vectorised kernels per micro-batch: no host loop over examples and no host-device sync. The
trainer hands it tokens on its compute device, so every mask, time, SNR and noise tensor the model and the loss
read is there."""

from __future__ import annotations

import dataclasses

import torch

from dsl_scale.core import counter_rng
from dsl_scale.core.batch import Prepared
from dsl_scale.diffusion import dsl, mdlm
from dsl_scale.diffusion.schedules import antithetic_times_at, log_linear_sigma

# MDLM's draws from a step's key (seed, stream, step) and from a sequence's key (… , position); the
# discrete-corruption control adds two per sequence.
TIME_DRAW, MASK_DRAW, CORRUPT_DRAW, REPLACE_DRAW = 0, 1, 2, 3


def positions_on(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The examples' positions in the global batch, on the tokens' device (an asynchronous host-to-device copy:
    a blocking one would wait for the device's queue)."""
    if positions.shape != tokens.shape[:1] or positions.is_floating_point():
        raise ValueError(f"positions must be integers of shape {tuple(tokens.shape[:1])} (one per sequence), got "
                         f"{positions.dtype} of shape {tuple(positions.shape)}")
    return positions.to(tokens.device, non_blocking=True)


class MDLMObjective:
    def __init__(self, mask_id: int, eps: float, seed: int):
        self.mask_id = mask_id
        self.eps = eps
        self.seed = seed

    def prepare(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int,
                stream: int) -> Prepared:
        """Antithetic times over the `batch_size` examples sharing `key` (a step), one offset per step; per-example
        mask noise keyed by the example's position."""
        device, positions = tokens.device, positions_on(tokens, positions)
        u = counter_rng.key((self.seed, stream, key), device).uniform((), TIME_DRAW)
        t = antithetic_times_at(positions, batch_size, u, self.eps)
        noise = counter_rng.key((self.seed, stream, key, positions), device).uniform(tokens.shape[1:], MASK_DRAW)
        z, masked = mdlm.mask_tokens(tokens, t, noise, self.mask_id, self.eps)
        sigma = log_linear_sigma(t, self.eps).float()
        return Prepared(z, tokens, sigma, {"masked": masked, "t": t})

    def loss(self, logits: torch.Tensor, batch: Prepared, nll_fn, vocab_start: int) -> torch.Tensor:
        nll = nll_fn(logits, batch.targets, self.mask_id - vocab_start)
        return mdlm.mdlm_loss(nll, batch.extras["masked"], batch.extras["t"].to(nll.device), self.eps)


def uniform_corruption(tokens: torch.Tensor, keep: torch.Tensor, choose: torch.Tensor, draw: torch.Tensor,
                       rate: float, mask_id: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, corrupted): where `keep` (visible) and choose < rate, the token becomes a uniform id other than
    itself and [MASK] (the last id): r = ⌊draw·(V − 2)⌋, skipping the original. choose, draw: uniforms [b, L]."""
    if mask_id != vocab_size - 1:
        raise ValueError(f"uniform corruption expects [MASK] to be the last id ({vocab_size - 1}), got {mask_id}")
    corrupted = keep & (choose < rate)
    r = (draw * (vocab_size - 2)).long().clamp_max(vocab_size - 3)
    replacement = r + (r >= tokens).long()
    return torch.where(corrupted, replacement, tokens), corrupted


def visible_cross_entropy(nll: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Σ over visible positions of −log x_θ[x] (raw outputs, no carry-over), averaged over all tokens."""
    return (nll * visible.to(nll.dtype)).mean()


class MDLMCorruptObjective(MDLMObjective):
    """The discrete-corruption control: MDLM's masking, then each visible token replaced by a uniform other id
    with probability `corrupt_rate`; loss = MDLM's NELBO at the masked positions + visible_weight · the
    cross-entropy of the original token at every visible position (corrupted or not), both averaged over all
    tokens. The NELBO term reads SUBS's suppressed [MASK] logit as MDLM does; the visible term trains what
    MDLM never does, the model's own prediction where it sees a token, so it learns to doubt a wrong one
    without DSL's continuous channel."""

    def __init__(self, mask_id: int, eps: float, seed: int, vocab_size: int, corrupt_rate: float,
                 visible_weight: float):
        super().__init__(mask_id, eps, seed)
        if not 0 <= corrupt_rate <= 1 or visible_weight < 0:
            raise ValueError(f"objective.corrupt_rate={corrupt_rate} must lie in [0, 1] and objective.visible_weight="
                             f"{visible_weight} be >= 0")
        self.vocab_size, self.corrupt_rate, self.visible_weight = vocab_size, corrupt_rate, visible_weight

    def prepare(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int,
                stream: int) -> Prepared:
        batch = super().prepare(tokens, positions, key, batch_size, stream)
        masked = batch.extras["masked"]
        sequence = counter_rng.key((self.seed, stream, key, positions_on(tokens, positions)), tokens.device)
        ids, corrupted = uniform_corruption(batch.inputs, ~masked, sequence.uniform(tokens.shape[1:], CORRUPT_DRAW),
                                            sequence.uniform(tokens.shape[1:], REPLACE_DRAW), self.corrupt_rate,
                                            self.mask_id, self.vocab_size)
        return dataclasses.replace(batch, inputs=ids, extras={**batch.extras, "corrupted": corrupted})

    def loss(self, logits: torch.Tensor, batch: Prepared, nll_fn, vocab_start: int) -> torch.Tensor:
        nll = nll_fn(logits, batch.targets, self.mask_id - vocab_start)
        masked = batch.extras["masked"]
        nelbo = mdlm.mdlm_loss(nll, masked, batch.extras["t"].to(nll.device), self.eps)
        return nelbo + self.visible_weight * visible_cross_entropy(nll, ~masked)


class AutoregressiveObjective:
    """The AR baseline: the same stack with causal attention, next-token cross-entropy per token."""

    def __init__(self, mask_id: int):
        self.mask_id = mask_id

    def prepare(self, tokens: torch.Tensor, positions: torch.Tensor, key: int, batch_size: int,
                stream: int) -> Prepared:
        return Prepared(tokens[:, :-1], tokens[:, 1:])

    def loss(self, logits: torch.Tensor, batch: Prepared, nll_fn, vocab_start: int) -> torch.Tensor:
        return nll_fn(logits, batch.targets, self.mask_id - vocab_start).mean()


class DSLObjective:
    """DSL (docs/method.md §4): per-sequence SNRs, z = s·K_x + √s·ε, unweighted cross-entropy over all positions."""

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
        words = (self.seed, stream, key, positions_on(tokens, positions))
        c = dsl.corrupt(tokens, self.keys_on(tokens.device), self.schedule, self.mask_id, words)
        return Prepared(c.ids, tokens, None, {"snr": c.snr}, {"z": c.z, "discrete": c.discrete})

    def loss(self, logits: torch.Tensor, batch: Prepared, nll_fn, vocab_start: int) -> torch.Tensor:
        return dsl.dsl_loss(nll_fn(logits, batch.targets, self.mask_id - vocab_start))


def build_objective(objective, mask_id: int, vocab_size: int, seed: int):
    """The objective named by `objective.name` (an ObjectiveConfig)."""
    if objective.name == "mdlm":
        return MDLMObjective(mask_id, objective.eps, seed)
    if objective.name == "ar":
        return AutoregressiveObjective(mask_id)
    if objective.name == "dsl":
        return DSLObjective(objective, mask_id, vocab_size, seed)
    if objective.name == "mdlm_corrupt":
        return MDLMCorruptObjective(mask_id, objective.eps, seed, vocab_size, objective.corrupt_rate,
                                    objective.visible_weight)
    name = objective.name
    raise ValueError(f"unknown objective {name!r}")
