"""Sampling and scoring on a fake GPU (tests/fake_gpu.py), bf16 parameters: the model calls a step of each sampler
family makes through ModelDenoiser (discrete ids for MDLM / ReMDM / confidence unmasking, localization
observations z through DSL's converter for the continuous and hybrid samplers, causal ids for AR), with the
sampler's state on the device; and the gen-PPL scorer's chunked NLL. A CPU tensor planted in the model fails.

The samplers' own per-row host logic (nonzero row picks, bincount nucleus bins, one torch.Generator per sample)
reads values, which fake tensors do not have: those parts run in the CPU tests (test_sampling_device.py)."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from dsl_scale.config import ModelConfig, ObjectiveConfig
from dsl_scale.evaluation import gen_ppl
from dsl_scale.evaluation.scorers import CheckpointScorer
from dsl_scale.model.factory import build_dit
from dsl_scale.sampling.denoiser import ModelDenoiser
from dsl_scale.sampling.generate import state_device
from dsl_scale.tokenizer import get_tokenizer
from tests.fake_gpu import fake_gpu, on_fake_gpu

TOKENIZER = "char"  # V = 29, [MASK] = 28
V, MASK_ID, L = 29, 28, 16
MODEL = ModelConfig(hidden=32, n_heads=2, cond_dim=16, n_blocks=2, seq_len=L)


def model_for(objective: str):
    return build_dit(MODEL, V, 1, causal=objective == "ar",
                     objective=ObjectiveConfig(objective, **({"key_dim": 8} if objective == "dsl" else {})),
                     mask_id=MASK_ID)


@pytest.mark.parametrize("family", ["discrete", "continuous", "ar"])
def test_a_sampler_step_through_the_denoiser_stays_on_the_device(family, monkeypatch, process_group):
    model = model_for({"discrete": "dsl", "continuous": "dsl", "ar": "ar"}[family])
    with fake_gpu(monkeypatch) as device:
        denoise = ModelDenoiser(on_fake_gpu(model, torch.bfloat16), batch_invariant="auto")
        assert denoise.device == state_device(denoise) == device and denoise.batch_invariant is False
        ids = torch.full((3, L), MASK_ID, dtype=torch.long, device=state_device(denoise))
        if family == "continuous":
            assert denoise.keys.dtype == torch.float32 and denoise.keys.device == device
            z = torch.randn(3, L, denoise.keys.shape[1], device=device) + denoise.keys[ids]
            logits = denoise.from_z(z)
        else:
            logits = denoise(ids)
        assert isinstance(logits, FakeTensor) and logits.device == device and logits.shape == (3, L, V)
        probs = torch.softmax(logits.double(), dim=-1)  # what every sampler does next, on the state device
        assert probs.device == device


@pytest.mark.parametrize("family", ["discrete", "continuous"])
def test_a_cpu_tensor_planted_in_the_model_fails_the_sampler_step(family, monkeypatch, process_group):
    model = model_for("dsl")
    with fake_gpu(monkeypatch) as device:
        denoise = ModelDenoiser(on_fake_gpu(model, torch.bfloat16))
        model.rotary_emb.inv_freq = model.rotary_emb.inv_freq.to("cpu")
        ids = torch.full((2, L), MASK_ID, dtype=torch.long, device=device)
        with pytest.raises(Exception, match="fakegpu:0 and cpu|cpu and fakegpu:0"):
            if family == "continuous":
                denoise.from_z(torch.zeros(2, L, 8, device=device))
            else:
                denoise(ids)


def test_the_gen_ppl_scorer_scores_on_the_device(monkeypatch, process_group):
    """The chunked NLL of an AR checkpoint's scorer (CheckpointScorer.logits, gen_ppl.chunk_nll); only the
    per-chunk sums come back to the host (placeholders here: fake tensors have no values)."""
    scorer = CheckpointScorer.__new__(CheckpointScorer)
    model = model_for("ar")
    with fake_gpu(monkeypatch, host_reads=True) as device:
        scorer.loaded = type("Loaded", (), {"model": on_fake_gpu(model, torch.float32).eval()})()
        scorer.tokenizer, scorer.device = get_tokenizer(TOKENIZER), device
        sums, counts = gen_ppl.chunk_nll(scorer, [[27, 1, 2, 3], [27, 4, 5]])
        assert len(sums) == len(counts) == 2
        scorer.device = torch.device("cpu")  # the batch built on the host: the model refuses it
        with pytest.raises(Exception, match="fakegpu:0 and cpu|cpu and fakegpu:0"):
            gen_ppl.chunk_nll(scorer, [[27, 1, 2, 3]])
