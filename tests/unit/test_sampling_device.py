"""Sampling and scoring on the compute device (core/device.py): the inference loader places and casts the
model, the denoiser hands logits back where the sampler keeps its state, `batch_invariant=auto` batches
forwards off the CPU, and samples stay a function of (seed, index) whatever the batch size and rank count.

This machine has no GPU, so compute_device() is the CPU here: the placement tests pin every parameter and
buffer to compute_device() and the state tensors to state_device(), which is what a GPU run relies on."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dsl_scale.checkpoint.consolidated import write_consolidated
from dsl_scale.checkpoint.inference import load_for_inference
from dsl_scale.checkpoint.readers import TensorSource
from dsl_scale.config import Config, ModelConfig, ObjectiveConfig
from dsl_scale.core.device import compute_device
from dsl_scale.core.files import atomic_directory
from dsl_scale.evaluation import gen_ppl
from dsl_scale.evaluation.scorers import CheckpointScorer
from dsl_scale.model.factory import build_dit
from dsl_scale.sampling.config import SampleConfig, SamplerConfig, validate_sample_config
from dsl_scale.sampling.continuous import sample_dsl_continuous
from dsl_scale.sampling.denoiser import ModelDenoiser, resolve_batch_invariant
from dsl_scale.sampling.driver import my_batches
from dsl_scale.sampling.generate import sample, state_device
from dsl_scale.sampling.registry import sampler_names
from dsl_scale.tokenizer import get_tokenizer
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)

TOKENIZER = "char"  # 27 symbols, BOS = EOS = 27, [MASK] = 28: V = 29
L, N = 32, 7


def write_checkpoint(out, objective: str, seed: int = 0):
    """A micro DiT with a random (not zero) output layer, saved as a consolidated checkpoint."""
    tok = get_tokenizer(TOKENIZER)
    cfg = Config(model=ModelConfig(name="micro", hidden=32, n_blocks=2, n_heads=2, cond_dim=16, seq_len=L),
                 objective=ObjectiveConfig(objective))
    cfg.data.tokenizer = TOKENIZER
    model = build_dit(cfg.model, tok.vocab_size, seed, causal=objective == "ar", objective=cfg.objective,
                      mask_id=tok.mask_id)
    with torch.no_grad():  # the zero-initialised output layer would make x_θ uniform
        model.output_layer.linear.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    with atomic_directory(out) as tmp:
        write_consolidated(TensorSource({"model": state}, dataclasses.asdict(cfg)), tmp)
    return model.eval()


@pytest.fixture(scope="module")
def mdlm_checkpoint(tmp_path_factory, process_group):
    out = tmp_path_factory.mktemp("device") / "mdlm"
    return out, write_checkpoint(out, "mdlm")


def test_the_inference_loader_puts_the_model_on_the_compute_device(mdlm_checkpoint):
    path, original = mdlm_checkpoint
    loaded = load_for_inference(path)
    tensors = dict(loaded.model.named_parameters()) | dict(loaded.model.named_buffers())
    assert loaded.device == compute_device() and tensors
    assert {name: t.device for name, t in tensors.items()} == {name: compute_device() for name in tensors}
    expected = torch.float32 if compute_device().type == "cpu" else torch.bfloat16  # precision=auto
    assert loaded.precision == {torch.float32: "fp32", torch.bfloat16: "bf16"}[expected]
    assert all(p.dtype == expected for p in loaded.model.parameters())
    ids = torch.randint(0, 27, (2, L), generator=torch.Generator().manual_seed(0), device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded.model(ids.to(loaded.device)).cpu().float(), original(ids))


def test_precision_casts_the_model_but_keeps_the_dsl_keys_in_fp32(tmp_path, process_group):
    write_checkpoint(tmp_path / "dsl", "dsl")
    loaded = load_for_inference(tmp_path / "dsl", precision="bf16")
    assert loaded.precision == "bf16" and loaded.model.converter.keys.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    denoise = ModelDenoiser(loaded.model)
    assert denoise.keys.dtype == torch.float32 and denoise.keys.device == compute_device()
    result = sample_dsl_continuous(denoise, [0, 1], L, 2, get_tokenizer(TOKENIZER).mask_id, seed=0)
    assert result.tokens.device == state_device(denoise) == compute_device()
    with pytest.raises(ValueError, match="precision='fp16'"):
        load_for_inference(tmp_path / "dsl", precision="fp16")


def test_the_denoiser_returns_logits_on_the_state_device(mdlm_checkpoint):
    denoise = ModelDenoiser(load_for_inference(mdlm_checkpoint[0]).model)
    assert denoise.device == state_device(denoise) == compute_device()
    ids = torch.full((3, L), get_tokenizer(TOKENIZER).mask_id, dtype=torch.long, device=state_device(denoise))
    logits = denoise(ids)
    assert logits.shape == (3, L, 29) and logits.device == ids.device
    result = sample(denoise, [0, 1], L, 4, get_tokenizer(TOKENIZER).mask_id, seed=0)
    assert result.tokens.device == result.psi.device == compute_device()


def test_auto_batches_forwards_off_the_cpu_only():
    assert resolve_batch_invariant("auto", torch.device("cpu")) is True
    assert resolve_batch_invariant("auto", torch.device("cuda", 3)) is False
    assert resolve_batch_invariant(False, torch.device("cpu")) is False
    assert SampleConfig().batch_invariant == "auto"
    with pytest.raises(ValueError, match="batch_invariant='sometimes'"):
        resolve_batch_invariant("sometimes", torch.device("cpu"))
    with pytest.raises(ValueError, match="batch_invariant='sometimes'"):
        validate_sample_config(SampleConfig(batch_invariant="sometimes"), sampler_names())


def _in_batches(denoise, batch_size: int, sampler: SamplerConfig) -> torch.Tensor:
    mask_id = get_tokenizer(TOKENIZER).mask_id
    return torch.cat([sample(denoise, batch, L, 12, mask_id, seed=5, sampler=sampler).tokens
                      for batch in my_batches(N, batch_size, set(), 0, 1)])


@pytest.mark.parametrize("batch_invariant", ["auto", False])
def test_samples_do_not_depend_on_the_batch_size(mdlm_checkpoint, batch_invariant):
    """auto on CPU is one forward per sequence: identical tokens by construction. Batched forwards (the GPU
    default) may round a row differently with its batch-mates; the stated tolerance is ≥ 99 % identical
    tokens (CPU fp32 gives 100 % here: oneDNN rounds a row the same at every batch size)."""
    denoise = ModelDenoiser(load_for_inference(mdlm_checkpoint[0]).model, batch_invariant)
    assert denoise.batch_invariant is (batch_invariant == "auto")
    cfg = SamplerConfig(name="remdm_loop", eta=0.1)
    alone, threes, together = (_in_batches(denoise, b, cfg) for b in (1, 3, N))
    assert alone.shape == (N, L) and not (alone == get_tokenizer(TOKENIZER).mask_id).any()
    for other in (threes, together):
        if batch_invariant == "auto":
            assert torch.equal(other, alone)
        else:
            assert (other == alone).double().mean() >= 0.99


def test_batches_are_fixed_blocks_whatever_the_rank_count_and_resume():
    blocks = [[0, 1, 2], [3, 4, 5], [6]]
    assert my_batches(N, 3, set(), 0, 1) == blocks
    two = [my_batches(N, 3, set(), r, 2) for r in (0, 1)]
    assert two == [[blocks[0], blocks[2]], [blocks[1]]]
    # after a kill: a block with a sample missing is redone whole, so its samples keep their batch-mates
    assert my_batches(N, 3, {0, 1, 2, 4}, 0, 1) == blocks[1:]
    assert my_batches(N, 3, set(range(N)), 0, 1) == []


def _per_sequence_gen_ppl(model, samples: list[list[int]], bos: int, eos: int) -> float:
    """The old computation, written out: each sample alone (cut after its first EOS, BOS-framed chunks of
    the context), fp64 log-softmax, no padding."""
    total, count = 0.0, 0
    for tokens in samples:
        body, _ = gen_ppl.cut_at_first_eos(tokens, eos, bos)
        for start in range(0, len(body), L - 1):
            ids = torch.tensor([[bos, *body[start:start + L - 1]]], device="cpu")
            with torch.no_grad():
                logits = model(ids).double()[0, :-1]
            logits[:, get_tokenizer(TOKENIZER).mask_id] = -math.inf
            total -= float(torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    return math.exp(total / count)


def test_gen_ppl_on_the_device_equals_the_per_sequence_computation(tmp_path, process_group):
    model = write_checkpoint(tmp_path / "ar", "ar", seed=3)
    scorer = CheckpointScorer(str(tmp_path / "ar"))
    assert scorer.device == compute_device() and scorer.loaded.precision == "fp32"
    tok = get_tokenizer(TOKENIZER)
    draw = torch.Generator().manual_seed(7)
    lengths = [5, 31, 40, 70, 12]  # within one chunk, exactly one, and several (padding in every batch)
    samples = [torch.randint(0, 27, (n,), generator=draw, device="cpu").tolist() for n in lengths]
    samples[1] = [tok.bos_id, *samples[1][:20], tok.eos_id, *samples[1][20:]]  # framing and a cut
    result = gen_ppl.generative_perplexity(samples, tok, scorer, batch_size=3)
    assert isinstance(result["gen_ppl"], float)
    assert result["gen_ppl"] == pytest.approx(_per_sequence_gen_ppl(model, samples, tok.bos_id, tok.eos_id),
                                              rel=1e-5)
