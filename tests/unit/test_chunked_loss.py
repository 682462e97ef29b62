"""The chunked vocab-parallel cross-entropy (parallel/cross_entropy.py) against the whole-batch fp32 path it
replaces (suppress the [MASK] logit in place, upcast, megatron's vocab_parallel_cross_entropy), through each
objective's loss, and its memory: beyond the logits and their gradient, it grows with the chunk only."""

from __future__ import annotations

import pytest
import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from torch.profiler import ProfilerActivity, profile

from dsl_scale.core.batch import Prepared
from dsl_scale.diffusion import dsl, mdlm
from dsl_scale.diffusion.objectives import AutoregressiveObjective, DSLObjective, MDLMObjective
from dsl_scale.model import DiT
from dsl_scale.parallel.cross_entropy import FusedChunkMath, chunked_token_nll, nll_function

VOCAB, MASK_ID = 13, 12
FP32 = {"rtol": 1e-6, "atol": 1e-7}
# bf16 logits: the NLL is computed in fp32 from the same values (fp32 tolerance); the gradient is stored as
# bf16(softmax − one-hot) and then scaled, two roundings where the reference has one: within 2 bf16 ulps.
BF16_GRAD = {"rtol": 2**-7, "atol": 1e-6}


def old_token_nll(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int = 0) -> torch.Tensor:
    """The path before chunking: the objectives' in-place SUBS suppression, then fp32 megatron cross-entropy."""
    mdlm.suppress_mask_logit_(logits, MASK_ID, vocab_start)
    return vocab_parallel_cross_entropy(logits.float(), targets)


def leaf(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype).requires_grad_()


def nll_and_grad(nll_fn, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor):
    x = logits.detach().clone().requires_grad_()
    nll = nll_fn(x.clone(), targets)  # through a copy, as the model's logits are a non-leaf
    (nll * weights).sum().backward()
    return nll.detach(), x.grad


@pytest.mark.parametrize("fused", [False, True], ids=["in-place", "fused-steps"])
@pytest.mark.parametrize("chunk", [1, 5, 21, 64])
@pytest.mark.parametrize("suppressed", [MASK_ID, None])
def test_chunked_nll_and_gradient_equal_the_whole_batch_fp32_path(process_group, chunk, suppressed, fused):
    """Both per-chunk implementations: the eager in-place steps and the pure ones model.compile compiles."""
    steps = FusedChunkMath(compiled=False) if fused else None
    logits, targets = leaf((3, 7, VOCAB), torch.float32), torch.randint(0, MASK_ID, (3, 7))
    weights = torch.rand(3, 7, generator=torch.Generator().manual_seed(1))
    want_nll, want_grad = nll_and_grad(
        (lambda x, t: old_token_nll(x, t)) if suppressed is not None
        else (lambda x, t: vocab_parallel_cross_entropy(x, t)), logits, targets, weights)
    got_nll, got_grad = nll_and_grad(lambda x, t: chunked_token_nll(x, t, suppressed, chunk, steps), logits,
                                     targets, weights)
    torch.testing.assert_close(got_nll, want_nll, **FP32)
    torch.testing.assert_close(got_grad, want_grad, **FP32)
    if suppressed is not None:
        assert torch.all(got_grad[..., suppressed] == 0)
        # the unchunked reference the evaluation uses takes the same argument
        ref_nll, ref_grad = nll_and_grad(lambda x, t: DiT.token_nll(x, t, suppressed), logits, targets, weights)
        torch.testing.assert_close(ref_nll, want_nll, **FP32)
        torch.testing.assert_close(ref_grad, want_grad, **FP32)


@pytest.mark.parametrize("fused", [False, True], ids=["in-place", "fused-steps"])
def test_bf16_logits_give_the_fp32_nll_and_a_gradient_within_two_bf16_ulps(process_group, fused):
    logits, targets = leaf((4, 9, VOCAB), torch.bfloat16), torch.randint(0, MASK_ID, (4, 9))
    weights = torch.rand(4, 9, generator=torch.Generator().manual_seed(2))
    want_nll, want_grad = nll_and_grad(old_token_nll, logits, targets, weights)
    steps = FusedChunkMath(compiled=False) if fused else None
    got_nll, got_grad = nll_and_grad(lambda x, t: chunked_token_nll(x, t, MASK_ID, 4, steps), logits, targets,
                                     weights)
    assert got_nll.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got_nll, want_nll, **FP32)
    torch.testing.assert_close(got_grad.float(), want_grad.float(), **BF16_GRAD)


def objective_cases(b: int, length: int):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, MASK_ID, (b, length), generator=g)
    t = torch.rand(b, generator=g)
    masked = torch.rand(b, length, generator=g) < t[:, None]
    mdlm_batch = Prepared(torch.where(masked, MASK_ID, tokens), tokens, t, {"masked": masked, "t": t})
    dsl_objective = DSLObjective.__new__(DSLObjective)  # the loss half only reads mask_id
    dsl_objective.mask_id = MASK_ID
    return [
        ("mdlm", MDLMObjective(MASK_ID, 1e-3, 0), mdlm_batch,
         lambda nll: mdlm.mdlm_loss(nll, masked, t, 1e-3)),
        ("ar", AutoregressiveObjective(MASK_ID), Prepared(tokens[:, :-1], tokens[:, 1:]), lambda nll: nll.mean()),
        ("dsl", dsl_objective, Prepared(tokens, tokens), dsl.dsl_loss),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(3), ids=["mdlm", "ar", "dsl"])
def test_each_objectives_loss_and_gradient_equal_the_unchunked_path(process_group, dtype, case):
    b, length = 3, 11
    name, objective, batch, reduce = objective_cases(b, length)[case]
    positions = batch.targets.shape[1]
    logits = leaf((b, positions, VOCAB), dtype, seed=4)

    x_ref = logits.detach().clone().requires_grad_()
    want = reduce(old_token_nll(x_ref.clone(), batch.targets))
    want.backward()
    x = logits.detach().clone().requires_grad_()
    inputs = x.clone()
    got = objective.loss(inputs, batch, nll_function(chunk_tokens=4), 0)
    got.backward()
    torch.testing.assert_close(got, want, **FP32, msg=lambda m: f"{name} loss: {m}")
    tolerance = FP32 if dtype == torch.float32 else BF16_GRAD
    torch.testing.assert_close(x.grad.float(), x_ref.grad.float(), **tolerance, msg=lambda m: f"{name} grad: {m}")
    assert torch.equal(inputs, x.detach()), "the loss must leave the logits as they are"


def loss_peak_bytes(nll_fn, logits: torch.Tensor, targets: torch.Tensor, backward: bool = True) -> int:
    """Peak CPU bytes allocated while the loss of a copy of `logits` runs forward and backward (torch.profiler's
    allocation records, summed in time order)."""
    def run() -> None:
        x = logits.clone().requires_grad_(backward)
        loss = nll_fn(x, targets).mean()
        if backward:
            loss.backward()

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    live = peak = 0
    for record in records:
        live += record.nbytes()
        peak = max(peak, live)
    return peak


def test_loss_memory_beyond_the_logits_and_their_gradient_grows_with_the_chunk_not_the_batch(process_group):
    vocab, chunk = 1024, 128
    extra = {}
    for tokens in (1024, 4096):
        logits = torch.randn(tokens, vocab).to(torch.bfloat16)
        targets = torch.randint(0, vocab, (tokens,))
        held = 2 * logits.numel() * logits.element_size()  # the logits and their gradient, for any loss
        extra[tokens] = (loss_peak_bytes(lambda x, t: chunked_token_nll(x, t, 5, chunk), logits, targets) - held,
                         loss_peak_bytes(lambda x, t: DiT.token_nll(x, t, 5), logits, targets) - held)
    chunk_fp32 = chunk * vocab * 4
    (small, small_ref), (large, large_ref) = extra[1024], extra[4096]
    # one fp32 chunk and its temporaries, plus per-token vectors (targets, NLLs)
    assert 0 < small <= 3 * chunk_fp32 and 0 < large <= 3 * chunk_fp32, extra
    assert large <= 1.1 * small, extra
    # the measure sees the whole-batch fp32 copy of the reference path: 4 × as many tokens, ≥ 3.5 × the bytes
    assert large_ref >= 3.5 * small_ref and large_ref >= 4096 * vocab * 4, extra


def test_without_grad_no_gradient_buffer_is_written(process_group):
    logits, targets = torch.randn(512, 256).requires_grad_(), torch.randint(0, 256, (512,))
    held = logits.numel() * logits.element_size()
    with torch.no_grad():
        no_grad = loss_peak_bytes(lambda x, t: chunked_token_nll(x, t, 5, 64), logits.detach(), targets,
                                  backward=False)
    assert no_grad - held <= 3 * 64 * 256 * 4  # the copy of the logits and one fp32 chunk: no [N, V] buffer


def test_a_chunk_below_one_token_is_refused(process_group):
    with pytest.raises(ValueError, match="loss_chunk_tokens=0"):
        nll_function(0)
    with pytest.raises(ValueError, match="at least 1 token"):
        chunked_token_nll(torch.zeros(2, VOCAB), torch.zeros(2, dtype=torch.long), None, 0)


@pytest.mark.slow  # inductor compiles three small kernels (~20 s cold on a busy CPU)
def test_compiled_chunk_steps_equal_the_eager_ones(process_group):
    logits, targets = leaf((3, 10, VOCAB), torch.float32), torch.randint(0, MASK_ID, (3, 10))
    weights = torch.rand(3, 10, generator=torch.Generator().manual_seed(5))
    want_nll, want_grad = nll_and_grad(lambda x, t: chunked_token_nll(x, t, MASK_ID, 8), logits, targets, weights)
    compiled = nll_function(8, compiled=True)
    got_nll, got_grad = nll_and_grad(lambda x, t: compiled(x, t, MASK_ID), logits, targets, weights)
    torch.testing.assert_close(got_nll, want_nll, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
