"""The model as a sampler's denoiser: ids [b, L] → logits [b, L, V], eval mode, no gradients.

Inputs go to the model's device; logits come back on the device of the inputs, where the sampler keeps
its state (`device`, the model's device, is where the samplers put it: see generate.state_device).

Per-sequence or batched forwards (`batch_invariant`). A GEMM over b·L rows does not round each row the
same way for every b (CPU: ~1e-7 between batch 1 and batch 4 on the DiT; GPU kernels pick other tilings
per shape), so with batched forwards a sample's logits can depend, in their last bits, on its batch-mates
and on which of them a cached step skipped. One forward per sequence makes a sample bit-independent of its
batch; on CPU at L ≥ 64 a single sequence already fills the GEMMs, so it costs about the same as the
batched call (tools/bench_sampler.py), while on an accelerator it would leave most of the chip idle.
"auto" (the default) is therefore per-sequence on CPU and batched elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn


def resolve_batch_invariant(batch_invariant: bool | str, device: torch.device) -> bool:
    """True (one forward per sequence), False (batched), or "auto": per-sequence on CPU, batched elsewhere."""
    if not (isinstance(batch_invariant, bool) or batch_invariant == "auto"):
        raise ValueError(f"batch_invariant={batch_invariant!r} must be true, false or auto")
    if batch_invariant == "auto":
        return torch.device(device).type == "cpu"
    return bool(batch_invariant)


class ModelDenoiser:
    def __init__(self, model: nn.Module, batch_invariant: bool | str = "auto"):
        if getattr(getattr(model, "cfg", None), "time_conditioning", False):
            # docs/method.md §5 samples without time conditioning; caching x_θ across steps relies on it.
            raise NotImplementedError("sampling a time-conditioned model is not supported")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.batch_invariant = resolve_batch_invariant(batch_invariant, self.device)
        converter = getattr(model, "converter", None)
        # DSL checkpoints only: the token keys K [V, d] of the localization channel (docs/method.md §4), fp32 on the
        # state's device (the samplers' posterior means use them next to the logits).
        self.keys: torch.Tensor | None = None if converter is None else converter.keys.detach().float()

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(1)) if self.batch_invariant else [x]

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        logits = [self.model(chunk.to(self.device)) for chunk in self._chunks(ids)]
        return torch.cat(logits).to(ids.device)

    @torch.no_grad()
    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        """Localization observations z [b, L, d] → logits [b, L, V], every position through the converter."""
        if self.keys is None:
            raise ValueError("this model has no DSL converter: it cannot denoise continuous inputs z")
        mask_id = self.model.cfg.mask_id
        outs = []
        for chunk in self._chunks(z):
            chunk = chunk.to(self.device, torch.float32)
            # ids are unused: no position is discrete
            ids = torch.full(chunk.shape[:2], mask_id, dtype=torch.long, device=self.device)
            discrete = torch.zeros(chunk.shape[:2], dtype=torch.bool, device=self.device)
            outs.append(self.model(ids, z=chunk, discrete=discrete))
        return torch.cat(outs).to(z.device)
