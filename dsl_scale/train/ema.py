"""Exponential moving average of the weights this rank holds: the fp32 master weights under bf16 training (the
module's bf16 weights are their rounded copies), kept in the optimizer's own partitioning (ZeRO-1/2: this rank's flat
fp32 partitions; ZeRO-3: its parameter partitions), so an update reads no other rank's weights."""

from __future__ import annotations

import torch

from dsl_scale.parallel.masters import WeightSource


class EMA:
    def __init__(self, source: WeightSource, decay: float):
        """`source`: parallel/masters.py's `weight_source(engine)`, or any WeightSource."""
        self.decay = decay
        self.source = source
        self.shadow = {k: t.detach().float().clone() for k, t in source.local().items()}

    @torch.no_grad()
    def update(self) -> None:
        weights = self.source.local()
        for key, shadow in self.shadow.items():
            shadow.lerp_(weights[key].float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameter name → the average (a collective at ZeRO-1/2: call on every data-parallel rank)."""
        return self.source.to_named(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        try:
            local = self.source.from_named(state)
        except KeyError as error:
            raise KeyError(f"EMA state {error.args[0]}") from None
        for key, shadow in self.shadow.items():
            shadow.copy_(local[key])
