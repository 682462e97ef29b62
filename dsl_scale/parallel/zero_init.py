"""ZeRO-3 start-up: parameters partitioned over the data-parallel group as the model creates them, so no rank
ever holds its whole pipeline stage (deepspeed.zero.Init), and initialised one gathered parameter at a time."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from torch import nn

from dsl_scale.config import Config
from dsl_scale.model.init import Whole, as_is
from dsl_scale.parallel.engine import deepspeed_config
from dsl_scale.parallel.topology import MegatronMPU, Topology


def gathered(params: list[nn.Parameter]) -> AbstractContextManager:
    """ZeRO-3 parameters made whole for writing; on leaving, DP rank 0's values are broadcast and partitioned
    again (every rank wrote the same values: the initialisation is a function of the seed)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def partitioned_build(cfg: Config, topo: Topology) -> tuple[AbstractContextManager, Whole]:
    """(the context to build the model in, how its initialisation makes a parameter whole): deepspeed.zero.Init
    and `gathered` under ZeRO-3, else nothing."""
    if cfg.parallel.zero_stage != 3:
        return contextlib.nullcontext(), as_is
    import deepspeed
    from megatron.core import parallel_state as ps

    # the DP group explicitly: without it zero.Init partitions (and broadcasts) over the whole world, across
    # pipeline stages and TP ranks that hold other parameters (a gloo size mismatch at PP 2)
    return deepspeed.zero.Init(config_dict_or_path=deepspeed_config(cfg, topo), mpu=MegatronMPU(),
                               data_parallel_group=ps.get_data_parallel_group()), gathered
