"""dsl-estimate-memory (cli/estimate_memory.py): the parameter count of the model it builds on `meta`, the ZeRO
rules, and its traced activations against those a real forward saves; dsl-submit prints it. The comparison
with tools/bench_memory.py's live multi-rank engines is tests/distributed/test_estimate_memory_live.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from dsl_scale.cli import estimate_memory as em
from dsl_scale.cli import submit
from tests.unit.test_bench_all import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_memory")


def test_the_zero_rules_shard_what_each_stage_shards():
    psi, n = 1000, 4
    assert em.state_bytes(psi, n, 0, "fp32", True) == {"params": 4000, "grads": 4000, "optimizer": 8000, "ema": 4000}
    assert em.state_bytes(psi, n, 1, "fp32", True) == {"params": 4000, "grads": 4000, "optimizer": 3000, "ema": 1000}
    assert em.state_bytes(psi, n, 2, "fp32", True)["grads"] == 1000
    assert em.state_bytes(psi, n, 3, "bf16", False) == {"params": 500, "grads": 1000, "optimizer": 3000, "ema": 0}


def test_parameters_and_activations_match_a_real_model_and_forward(process_group, bench):
    from dsl_scale.core import seeding
    from dsl_scale.diffusion.objectives import build_objective
    from dsl_scale.model.factory import build_dit
    from dsl_scale.parallel.cross_entropy import nll_function
    from dsl_scale.tokenizer import get_tokenizer

    cfg = bench.compose_config(["model=micro", "objective=dsl", "train.micro_batch=2", "train.global_batch=2"])
    tok = get_tokenizer(cfg.data.tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_dit(cfg.model, tok.vocab_size, seed=0, objective=cfg.objective, mask_id=tok.mask_id).train()
    (stage,) = em.estimate(cfg, 1)
    assert stage.parameters == sum(p.numel() for p in model.parameters())
    objective = build_objective(cfg.objective, tok.mask_id, tok.vocab_size, 0)
    tokens = torch.randint(0, tok.vocab_size - 1, (2, cfg.model.seq_len), generator=torch.Generator().manual_seed(0))
    with bench.SavedActivations(model.parameters()) as saved:
        batch = objective.prepare(tokens, torch.arange(2), 0, 2, seeding.MASK_STREAM)
        seeds = seeding.per_example(range(2), 0, seeding.DROPOUT_STREAM, 0)
        logits = model(batch.inputs, batch.sigma, dropout_seeds=seeds, **batch.model_kwargs)
        objective.loss(logits, batch, nll_function(cfg.model.loss_chunk_tokens), 0)
    assert saved.bytes > 0
    assert stage.bytes["activations"] == pytest.approx(saved.bytes, rel=0.10)


def test_pipeline_stages_split_the_parameters_and_hold_micro_batches_in_flight(process_group, bench):
    one = em.estimate(bench.compose_config(["model=micro", "train.global_batch=8", "train.micro_batch=2"]), 1)
    cfg = bench.compose_config(["model=micro", "parallel.pp=2", "train.global_batch=8", "train.micro_batch=2"])
    first, last = em.estimate(cfg, 2)
    assert first.parameters + last.parameters == one[0].parameters
    acts = em.activation_bytes(cfg, 50258, 50257, 2)
    blocks = acts["block"] * cfg.model.n_blocks // 2
    assert first.bytes["activations"] == 2 * (acts["embed"] + blocks)  # 1F1B: stage 0 holds PP micro-batches
    assert last.bytes["activations"] == acts["head"] + blocks
    recompute = em.activation_bytes(bench.compose_config(["model=micro", "model.recompute=true"]), 50258, 50257, 2)
    assert recompute["block"] < acts["block"] / 3  # a checkpointed block keeps its input only


def test_the_command_prints_a_table_and_refuses_a_bad_layout(process_group, capsys):
    assert em.main(["model=micro", "--world-size", "2", "parallel.zero_stage=2"]) == 0
    out = capsys.readouterr().out
    assert "TP 1 × PP 1 × DP 2, ZeRO-2" in out and "activations" in out and "largest:" in out
    assert em.main(["model=micro", "--world-size", "3", "parallel.tp=2"]) == 2
    assert "world size 3" in capsys.readouterr().err


def test_submit_prints_the_estimate_before_submitting(process_group, capsys):
    submit.submit(["pretrain", "cluster=local", "model=micro", "--dry-run"])
    out = capsys.readouterr().out
    assert "memory per rank (estimate) for micro" in out and "sbatch" in out
