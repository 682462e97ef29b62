"""ZeRO-3 start-up: parameters partitioned over the data-parallel group as the model creates them, so no rank
ever holds its whole pipeline stage (deepspeed.zero.Init), and initialised one gathered parameter at a time.

While zero.Init is active it replaces torch's tensor factories (torch.empty, zeros, arange, ...) with ones that
allocate on the accelerator in the training dtype, which the initialisation's draws must not see: they are fp32
on the host, from seeded CPU generators (model/init.py), whatever the training precision and device. So
`gathered` suspends those factories while a parameter is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager

from torch import nn

from dsl_scale.config import Config
from dsl_scale.core import patches
from dsl_scale.model.init import Whole, as_is
from dsl_scale.parallel.engine import deepspeed_config
from dsl_scale.parallel.topology import MegatronMPU, Topology

ZERO_INIT_FACTORIES = "deepspeed-zero-init-factories"  # a requirement in dsl_scale/core/patches.py


@contextlib.contextmanager
def host_factories() -> Iterator[None]:
    """torch's own tensor factories for the duration, also inside a deepspeed.zero.Init context (whose module
    hooks and factories come back on leaving); outside one, nothing changes."""
    from deepspeed.runtime.zero import partition_parameters

    if partition_parameters.top_level_context is None:
        yield
        return
    patches.require(ZERO_INIT_FACTORIES)
    partition_parameters.shutdown_init_context()
    try:
        yield
    finally:
        partition_parameters.restore_init_context()


@contextlib.contextmanager
def gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """ZeRO-3 parameters made whole for writing, with torch's own factories (`host_factories`); on leaving, DP
    rank 0's values are broadcast and partitioned again (every rank wrote the same values: the initialisation is a
    function of the seed)."""
    import deepspeed

    with host_factories(), deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield


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

