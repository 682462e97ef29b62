"""Validation likelihood bounds of a checkpoint: MDLM's NELBO (docs/method.md §3), the AR baseline's exact NLL.

The times and masks are the trainer's validation draws (seed, key 0, EVAL_STREAM, example index), so
`nelbo_examples=train.eval_examples seed=train.seed weights=model` reproduces the run's val_loss.
The model runs on the compute device in fp32 (a reported bound); the objectives draw there too (core/counter_rng.py),
the DSL bound's channel noise comes from a CPU generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from dsl_scale.core import seeding
from dsl_scale.data.loader import open_shards
from dsl_scale.diffusion import dsl
from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.diffusion.objectives import build_objective
from dsl_scale.evaluation import ranks

BoundFn = Callable[..., torch.Tensor]  # (tokens [b, L], example positions [b], n examples) → per-token loss


def _objective_bound(name: str) -> Callable[[Any, int, int], BoundFn]:
    def make(loaded, mask_id: int, seed: int) -> BoundFn:
        objective = build_objective(loaded.train_config.objective, mask_id, loaded.model.cfg.vocab_size, seed)
        model = loaded.model

        def bound(tokens: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
            batch = objective.prepare(tokens, positions, 0, n, seeding.EVAL_STREAM)  # on the tokens' device
            logits = model(batch.inputs, batch.sigma, **batch.model_kwargs)
            return objective.loss(logits, batch, type(model).token_nll, 0)
        return bound
    return make


def _mdlm_part_bound(loaded, mask_id: int, seed: int) -> BoundFn:
    """The discrete-corruption control's NELBO: MDLM's bound on clean inputs (its visible-position term and
    token noise are training signal, not part of the bound)."""
    from dsl_scale.diffusion.objectives import MDLMObjective

    objective, model = MDLMObjective(mask_id, loaded.train_config.objective.eps, seed), loaded.model

    def bound(tokens: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
        batch = objective.prepare(tokens, positions, 0, n, seeding.EVAL_STREAM)
        return objective.loss(model(batch.inputs, batch.sigma), batch, type(model).token_nll, 0)
    return bound


def _dsl_bound(loaded, mask_id: int, seed: int) -> BoundFn:
    """docs/method.md §4: −log p(x) ≤ ½∫₀^{s*} mmse(s) ds + CE(x | z_{s*}), per token, every position through the
    converter at a common SNR; the grid and noise draws come from the run's objective config."""
    objective, model = loaded.train_config.objective, loaded.model
    keys = model.converter.keys
    grid = dsl.snr_grid(objective.bound_s_star, objective.bound_points, objective.bound_s_min)

    def denoise(z: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        continuous = torch.zeros_like(tokens, dtype=torch.bool)
        logits = model(tokens, z=z.float(), discrete=continuous).double()
        suppress_mask_logit_(logits, mask_id)
        log_p = torch.log_softmax(logits, dim=-1)
        return log_p.exp() @ keys.double(), -log_p.gather(-1, tokens[..., None]).squeeze(-1)

    def bound(tokens: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
        generator = seeding.generator(seed, seeding.EVAL_STREAM, int(positions[0]), len(positions))
        result = dsl.likelihood_bound(denoise, tokens, keys, grid, generator, objective.bound_samples)
        return result.total.mean() / tokens.shape[1]

    return bound


# objective name → bound factory
BOUNDS: dict[str, Callable[[Any, int, int], BoundFn]] = {
    "mdlm": _objective_bound("mdlm"),
    "ar": _objective_bound("ar"),
    "dsl": _dsl_bound,
    "mdlm_corrupt": _mdlm_part_bound,
}


@torch.inference_mode()
def validation_bound(checkpoint: str, shard_dir: str = "", split: str = "val", examples: int = 0,
                     batch_size: int = 16, seed: int = 0, weights: str = "auto") -> dict[str, Any]:
    """Per-token NELBO (a bound on −log p) over the first `examples` blocks of the split (0 = all)."""
    from dsl_scale.checkpoint.inference import load_for_inference
    from dsl_scale.parallel.topology import init_process_groups

    init_process_groups(1, 1)
    loaded = load_for_inference(checkpoint, weights, precision="fp32")
    train_cfg = loaded.train_config
    kind = train_cfg.objective.name
    if kind not in BOUNDS:
        raise NotImplementedError(f"no likelihood bound for objective={kind!r} yet (have {sorted(BOUNDS)}); "
                                  "add it to dsl_scale.evaluation.likelihood.BOUNDS")
    data = open_shards(shard_dir or train_cfg.data.path, split)
    if data.seq_len != train_cfg.model.seq_len:
        raise ValueError(f"{data.path} holds {data.seq_len}-token blocks but {checkpoint} was trained at "
                         f"model.seq_len={train_cfg.model.seq_len}")
    n = min(examples or len(data), len(data))
    bound = BOUNDS[kind](loaded, loaded.tokenizer.mask_id, seed)
    mine = list(ranks.my_slice(n))
    total = 0.0
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        tokens = torch.stack([torch.as_tensor(data[i], dtype=torch.long, device="cpu") for i in idx])
        tokens = tokens.to(loaded.device)
        total += float(bound(tokens, torch.tensor(idx, device="cpu"), n)) * len(idx)
    nelbo = sum(ranks.gather(total)) / n
    return {"objective": kind, "nelbo": nelbo, "ppl_bound": math.exp(min(nelbo, 700)), "examples": n,
            "seq_len": data.seq_len, "split": split, "data": str(data.path), "seed": seed,
            "weights": loaded.weights, "checkpoint_dir": str(loaded.checkpoint_dir),
            "per_token": _PER_TOKEN.get(kind, "")}


_PER_TOKEN = {"mdlm": "mean over all L positions of each block (BOS/EOS framing included)",
              "dsl": "the sequence bound divided by L (BOS/EOS framing included)",
              "ar": "mean over the L - 1 predicted positions of each block"}
