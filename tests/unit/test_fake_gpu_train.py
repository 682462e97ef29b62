"""The training step on a fake GPU (tests/fake_gpu.py: every cpu/device mix raises at its line, as on CUDA):
the trainer's own micro-batches, forward, chunked loss and backward, bf16 parameters, for MDLM, DSL and AR, with
and without activation recomputation; and a CPU tensor planted in the step makes it fail."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from dsl_scale.config import Config, ModelConfig, ObjectiveConfig, TrainConfig
from dsl_scale.core import seeding
from dsl_scale.diffusion.objectives import build_objective
from dsl_scale.model.factory import build_dit
from dsl_scale.parallel.cross_entropy import nll_function
from tests.fake_gpu import fake_device, fake_gpu, on_fake_gpu

VOCAB, MASK_ID, L = 64, 63, 16
MODEL = dict(hidden=32, n_heads=2, cond_dim=16, n_blocks=2, seq_len=L)


def objective_config(name: str) -> ObjectiveConfig:
    return ObjectiveConfig(name, **({"key_dim": 8} if name == "dsl" else {}))


def trainer_for(name: str, recompute: bool, dropout: float):
    """A Trainer with only what a single-stage step reads; its `engine` is the model itself (DeepSpeed's engine
    cannot be built on fake tensors: it communicates and reads values)."""
    from dsl_scale.train import trainer as trainer_module

    model_cfg = ModelConfig(**MODEL, recompute=recompute, dropout=dropout)
    trainer = trainer_module.Trainer.__new__(trainer_module.Trainer)
    trainer.cfg = Config(model=model_cfg, train=TrainConfig(micro_batch=2, seed=1), objective=objective_config(name))
    trainer.objective = build_objective(trainer.cfg.objective, MASK_ID, VOCAB, seed=1)
    model = build_dit(model_cfg, VOCAB, 1, causal=name == "ar", objective=trainer.cfg.objective, mask_id=MASK_ID)
    trainer.nll_fn, trainer.vocab_start = nll_function(8), 0
    return trainer, model.train()


def tokens(b: int = 4) -> torch.Tensor:
    return torch.randint(0, MASK_ID, (b, L), generator=torch.Generator().manual_seed(0), device="cpu")


def train_step(trainer, model) -> list[torch.Tensor]:
    """One step's micro-batches through the trainer's forward and loss, and backward; the gradients."""
    trainer.engine = on_fake_gpu(model, torch.bfloat16)
    for batch in trainer._micro_batches(tokens(), 0, 3, 4, seeding.MASK_STREAM):
        loss = trainer._forward_loss(batch)
        assert loss.device == fake_device() and loss.dim() == 0
        loss.backward()
    return [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("name", ["mdlm", "dsl", "ar"])
def test_a_bf16_training_step_runs_on_the_device_only(name, recompute, monkeypatch, process_group):
    trainer, model = trainer_for(name, recompute, dropout=0.1)
    with fake_gpu(monkeypatch):
        grads = train_step(trainer, model)
        assert grads and all(isinstance(g, FakeTensor) and g.device == fake_device() and g.dtype == torch.bfloat16
                             for g in grads)


def test_a_cpu_tensor_planted_in_the_step_makes_it_fail(monkeypatch, process_group):
    """The test of the test: DSL's keys left on the CPU (what ZeRO-3 did before the engine moved the buffers)."""
    trainer, model = trainer_for("dsl", False, dropout=0.0)
    with fake_gpu(monkeypatch):
        trainer.engine = on_fake_gpu(model, torch.bfloat16)
        model.converter.keys = model.converter.keys.to("cpu")
        with pytest.raises(Exception, match="fakegpu:0 and cpu|cpu and fakegpu:0"):
            for batch in trainer._micro_batches(tokens(), 0, 3, 4, seeding.MASK_STREAM):
                trainer._forward_loss(batch).backward()


def test_batches_left_on_the_host_make_the_step_fail(monkeypatch, process_group):
    from dsl_scale.train import trainer as trainer_module

    trainer, model = trainer_for("mdlm", False, dropout=0.0)
    with fake_gpu(monkeypatch):
        monkeypatch.setattr(trainer_module, "compute_device", lambda: torch.device("cpu"))
        with pytest.raises(Exception, match="fakegpu:0 and cpu|cpu and fakegpu:0"):
            train_step(trainer, model)
