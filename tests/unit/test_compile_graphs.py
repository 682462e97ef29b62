"""`model.compile` without graph breaks or recompile storms: 12 blocks trained at three batch sizes (seeded
dropout on) through Dynamo's "eager" backend (graphs captured, nothing generated) stay within a budget of graphs,
break nowhere (megatron's rank-0-only deprecation warning used to break every branch on rank 0 alone) and never
hit the recompile limit (a hit raises here)."""

from __future__ import annotations

import warnings

import pytest
import torch

from dsl_scale.core import patches
from dsl_scale.model import DiT, DiTConfig
from dsl_scale.parallel.compile import MEGATRON_IMPLICIT_TP_GROUP, compile_blocks

CFG = DiTConfig(vocab_size=40, hidden=32, n_blocks=12, n_heads=4, cond_dim=16, dropout=0.1, mask_id=39)
TP_GROUP_WARNING = "Warning: tp_group is None"
GRAPH_BUDGET = 16  # measured: 12 (4 compiled callables; batch size and dropout site made dynamic after one change)


@pytest.fixture
def dynamo_counters(monkeypatch):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    yield counters
    torch._dynamo.reset()


def test_twelve_blocks_at_three_batch_sizes_compile_a_few_graphs_and_break_none(process_group, dynamo_counters):
    model = DiT(CFG).train()
    assert compile_blocks(model, backend="eager") == 12
    assert patches.is_applied(MEGATRON_IMPLICIT_TP_GROUP)
    generator = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=TP_GROUP_WARNING)  # megatron's implicit-tp_group warning is gone
        for batch in (2, 3, 5):
            tokens = torch.randint(0, 39, (batch, 16), generator=generator)
            model(tokens, dropout_seeds=torch.arange(batch)).float().sum().backward()
    breaks = dict(dynamo_counters["graph_break"])
    assert not breaks, f"graph breaks in the compiled blocks: {list(breaks)[:3]}"
    graphs = dynamo_counters["stats"]["unique_graphs"]
    assert 4 <= graphs <= GRAPH_BUDGET, f"{graphs} graphs for 12 blocks at 3 batch sizes (budget {GRAPH_BUDGET})"


def test_the_tp_group_patch_passes_the_default_group_and_undoes(process_group):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import layers

    original = layers.get_tensor_model_parallel_group_if_none
    patches.apply(MEGATRON_IMPLICIT_TP_GROUP)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=TP_GROUP_WARNING)
        assert layers.get_tensor_model_parallel_group_if_none(None) is parallel_state.get_tensor_model_parallel_group()
    patches.undo(MEGATRON_IMPLICIT_TP_GROUP)
    assert layers.get_tensor_model_parallel_group_if_none is original
