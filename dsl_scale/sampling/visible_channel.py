"""DSL checkpoints: the discrete state fed through the localization channel instead of the embedding table.

Our own variant (fengsxy/DSL-LLaDA's discrete decoders feed ids through the embedding; only its SDE mode
uses the converter): visible tokens go to the DSL model as observations at a finite SNR and [MASK] as s = 0,
so that its prediction at a visible position is a judgement of a noisy observation (what DSL trains:
cross-entropy at every position, docs/method.md §4) rather than of a clean token it only has to copy.
Here: z = s_vis·K_x at visible positions (the channel's mean, no noise, so x_θ is a function of the state and
the samplers' cache stays exact), z = 0 at masked ones, every position through the converter
(ModelDenoiser.from_z).
"""

from __future__ import annotations

from typing import Protocol

import torch


class ChannelDenoiser(Protocol):
    keys: torch.Tensor | None  # K [V, d]

    def from_z(self, z: torch.Tensor) -> torch.Tensor: ...  # z [b, L, d] → logits [b, L, V]


class VisibleThroughChannel:
    """ids [b, L] → logits [b, L, V] of `denoise` given z = s_vis·K_ids where visible, 0 where [MASK]."""

    def __init__(self, denoise: ChannelDenoiser, visible_snr: float, mask_id: int):
        keys = getattr(denoise, "keys", None)
        if keys is None or not hasattr(denoise, "from_z"):
            raise ValueError("sampler.visible_snr feeds tokens through DSL's converter: it needs a DSL checkpoint "
                             "(a DiT with a converter); leave it null for MDLM checkpoints")
        if not visible_snr > 0:
            raise ValueError(f"sampler.visible_snr={visible_snr} must be > 0 (or null: the embedding table)")
        self.denoise, self.keys, self.visible_snr, self.mask_id = denoise, keys, visible_snr, mask_id
        self.device = getattr(denoise, "device", keys.device)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        keys = self.keys.to(ids.device, torch.float32)
        z = self.visible_snr * keys[ids] * (ids != self.mask_id)[..., None]
        return self.denoise.from_z(z)
