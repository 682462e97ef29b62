"""Exponential moving average of the parameters this rank holds (its ZeRO-3 partition when sharded), taken of
the fp32 master weights under bf16 training (the module's bf16 weights are their rounded copies)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def local_tensor(param: torch.nn.Parameter) -> torch.Tensor:
    return getattr(param, "ds_tensor", param).data


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float,
                 masters: Callable[[], dict[str, torch.Tensor] | None] | None = None):
        """`masters`: name → the fp32 master of what this rank holds of each parameter (parallel/masters.py:
        local_masters), or None where there are none (fp32 training: the module's weights are the masters)."""
        self.decay = decay
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.masters = masters
        self.shadow = {n: t.detach().float().clone() for n, t in self._weights().items()}

    def _weights(self) -> dict[str, torch.Tensor]:
        masters = self.masters() if self.masters is not None else None
        if masters is None:
            return {n: local_tensor(p) for n, p in self.params}
        return masters

    @torch.no_grad()
    def update(self) -> None:
        weights = self._weights()
        for name, shadow in self.shadow.items():
            shadow.lerp_(weights[name].float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks parameters: {sorted(missing)[:5]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])
