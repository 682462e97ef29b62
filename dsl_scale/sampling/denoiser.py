"""The model as a sampler's denoiser: ids [b, L] → logits [b, L, V], eval mode, no gradients.

On CPU, a GEMM over b·L rows does not round each row the same way for every b (observed: ~1e-7
differences between batch 1 and batch 4 on the DiT), so a sample could depend on its batch-mates and
on which of them a cached step skipped. The cheapest exact fix is one forward per sequence: at
L ≥ 64 a single sequence already fills the GEMMs, so it costs about the same as the batched call
(tools/bench_sampler.py measures it). Thread count does not change the rows (checked on CPU).
"""

from __future__ import annotations

import torch
from torch import nn


class ModelDenoiser:
    def __init__(self, model: nn.Module, batch_invariant: bool = True):
        if getattr(getattr(model, "cfg", None), "time_conditioning", False):
            # SPEC §5 samples without time conditioning; caching x_θ across steps relies on it.
            raise NotImplementedError("sampling a time-conditioned model is not supported")
        self.model = model.eval()
        self.batch_invariant = batch_invariant
        converter = getattr(model, "converter", None)
        # DSL checkpoints only: the token keys K [V, d] of the localization channel (SPEC §4).
        self.keys: torch.Tensor | None = None if converter is None else converter.keys.detach().float().cpu()

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        chunks = ids.split(1) if self.batch_invariant else [ids]
        return torch.cat([self.model(chunk) for chunk in chunks])

    @torch.no_grad()
    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        """Localization observations z [b, L, d] → logits [b, L, V], every position through the converter."""
        if self.keys is None:
            raise ValueError("this model has no DSL converter: it cannot denoise continuous inputs z")
        mask_id = self.model.cfg.mask_id
        chunks = z.float().split(1) if self.batch_invariant else [z.float()]
        outs = []
        for chunk in chunks:
            # ids are unused: no position is discrete
            ids = torch.full(chunk.shape[:2], mask_id, dtype=torch.long, device=chunk.device)
            discrete = torch.zeros(chunk.shape[:2], dtype=torch.bool, device=chunk.device)
            outs.append(self.model(ids, z=chunk, discrete=discrete))
        return torch.cat(outs)
