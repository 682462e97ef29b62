"""Exponential moving average of the parameters this rank holds (its ZeRO-3 partition when sharded)."""

from __future__ import annotations

import torch


def local_tensor(param: torch.nn.Parameter) -> torch.Tensor:
    return getattr(param, "ds_tensor", param).data


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.shadow = {n: local_tensor(p).detach().float().clone() for n, p in self.params}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params:
            self.shadow[name].lerp_(local_tensor(param).float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks parameters: {sorted(missing)[:5]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])
