"""The three checkpoint readers (DeepSpeed shards, consolidated, Hugging Face / in-memory) share one interface:
each is a `CheckpointReader` and gives back the tensors that were written."""

from __future__ import annotations

import json

import torch

from dsl_scale.checkpoint import layout
from dsl_scale.checkpoint.consolidated import ConsolidatedCheckpoint, write_consolidated
from dsl_scale.checkpoint.hf_mdlm import write_hf
from dsl_scale.checkpoint.readers import CheckpointReader, TensorSource
from dsl_scale.checkpoint.source import open_checkpoint
from dsl_scale.checkpoint.zero_reader import TrainingCheckpoint
from dsl_scale.core.files import atomic_directory

MODEL = {"name": "micro", "hidden": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 16, "mlp_ratio": 4,
         "dropout": 0.0, "time_conditioning": False, "seq_len": 32}
CONFIG = {"model": MODEL, "objective": {"name": "mdlm"}, "data": {"tokenizer": "gpt2"}}


def micro_weights(process_group) -> dict[str, torch.Tensor]:
    from dsl_scale.config import ModelConfig
    from dsl_scale.model.factory import build_dit

    torch.manual_seed(3)
    model = build_dit(ModelConfig(**MODEL), 50258, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v) and v.numel()
            and not k.endswith("_extra_state")}


def assert_reads_back(reader, weights: dict[str, torch.Tensor], step: int) -> None:
    assert isinstance(reader, CheckpointReader), type(reader)
    assert reader.step == step and "model" in reader.available()
    full = reader.full("model")
    for name, value in weights.items():
        torch.testing.assert_close(full[name].float(), value.float(), atol=0, rtol=0, msg=name)


def test_deepspeed_consolidated_and_hf_readers_share_one_interface(process_group, tmp_path):
    weights = micro_weights(process_group)

    tag = tmp_path / "run" / "checkpoints" / layout.tag_for(7)  # a ZeRO-0, TP1·PP1 DeepSpeed tag
    tag.mkdir(parents=True)
    torch.save({"module": weights, "global_steps": 7, "config": CONFIG, "optimizer": None},
               tag / layout.model_states_name(0))
    (tag / layout.META).write_text(json.dumps({"step": 7, "tp": 1, "pp": 1, "dp": 1}))
    (tag.parent / layout.LATEST).write_text(tag.name)
    shards = open_checkpoint(tmp_path / "run").reader
    assert isinstance(shards, TrainingCheckpoint)
    assert_reads_back(shards, weights, 7)

    with atomic_directory(tmp_path / "consolidated") as out:
        write_consolidated(TensorSource({"model": weights}, CONFIG, step=7), out)
    consolidated = open_checkpoint(tmp_path / "consolidated").reader
    assert isinstance(consolidated, ConsolidatedCheckpoint)
    assert_reads_back(consolidated, weights, 7)

    with atomic_directory(tmp_path / "hf") as out:
        write_hf(weights, CONFIG, out)
    hf = open_checkpoint(tmp_path / "hf").reader
    assert_reads_back(hf, {k: v for k, v in weights.items() if "rotary" not in k}, 0)
