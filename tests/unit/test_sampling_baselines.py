"""The comparison's new sampling rules against transcriptions of the reference code's rules (kept here, not in
the package, on purpose):

- confidence-ordered unmasking against LLaDA's `generate` (GSAI-ML/LLaDA generate.py, the "standard" decoder
  of fengsxy/DSL-LLaDA): `get_num_transfer_tokens`, `add_gumbel_noise` (exp(logits) / (−log u)^τ, fp64) and
  the low-confidence transfer of the top-k masked positions, one block over the whole sequence;
- DSL-LLaDA's SDE settings (its eval_sde_gen_formal.py): the "sensitive" SNR schedule, the top-k x̂, the
  inference β, the adaptive noise scale;
- the AR sampler against the ancestral rule (token i ~ the nucleus of softmax(logits_{i−1} / τ));
- temperature in the ReMDM step, and the per-step trace of realised remasks.
"""

from __future__ import annotations

import math

import pytest
import torch

from dsl_scale.config import ModelConfig, ObjectiveConfig
from dsl_scale.model.factory import build_dit
from dsl_scale.sampling.autoregressive import sample_ar
from dsl_scale.sampling.config import SamplerConfig, validate_sample_config
from dsl_scale.sampling.continuous import (
    dsl_llada_noise_scale,
    dsl_llada_snr_points,
    posterior_mean,
    sample_dsl_continuous,
    sharpened,
)
from dsl_scale.sampling.denoiser import ModelDenoiser
from dsl_scale.sampling.generate import sample, sample_generators
from dsl_scale.sampling.registry import check_model_fits, get_sampler, sampler_names
from dsl_scale.sampling.steps import gumbel_noise
from dsl_scale.sampling.unmask import sample_confidence_unmask, transfer_counts
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)
from tests.unit.test_sampling_config import composed

VOCAB, MASK, LENGTH = 12, 11, 20


def model_logits(x: torch.Tensor) -> torch.Tensor:
    """A fixed 'model' whose logits depend on the whole state (continuous values: no ties)."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 2
    return table[x] + 0.07 * x.float().cumsum(-1)[..., None]


# --- LLaDA's generate, transcribed --------------------------------------------------------------------


def reference_transfer_counts(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    counts = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        counts[i, :remainder[i]] += 1
    return counts


def reference_generate(x: torch.Tensor, steps: int, temperature: float, uniforms) -> torch.Tensor:
    """LLaDA's loop for one block covering the whole sequence (no prompt, no CFG), low_confidence remasking.
    `uniforms(step, x)` gives the [B, L, V] fp64 uniforms torch.rand_like would have drawn."""
    x = x.clone()
    counts = reference_transfer_counts(x == MASK, steps)
    for i in range(steps):
        mask_index = x == MASK
        logits = model_logits(x).double()
        logits[..., MASK] = -1e6  # our models never predict [MASK] (SUBS); LLaDA's would have to learn it
        if temperature == 0:
            noisy = logits
        else:
            noisy = logits.exp() / (-torch.log(uniforms(i, x))) ** temperature
        x0 = noisy.argmax(dim=-1)
        p = torch.softmax(logits, dim=-1)
        x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
        x0 = torch.where(mask_index, x0, x)
        confidence = torch.where(mask_index, x0_p, torch.tensor(-math.inf, dtype=torch.float64))
        transfer = torch.zeros_like(x0, dtype=torch.bool)
        for j in range(confidence.shape[0]):
            _, select = torch.topk(confidence[j], k=int(counts[j, i]))
            transfer[j, select] = True
        x[transfer] = x0[transfer]
    return x


@pytest.mark.parametrize(("masked", "steps"), [(20, 8), (20, 20), (20, 3), (7, 16)])
def test_transfer_counts_match_llada(masked, steps):
    mask_index = torch.ones(1, masked, dtype=torch.bool)
    assert transfer_counts(masked, steps) == reference_transfer_counts(mask_index, steps)[0].tolist()


@pytest.mark.parametrize("steps", [4, 8, 20, 32])
def test_greedy_confidence_unmasking_is_llada_step_for_step(steps):
    cfg = SamplerConfig(name="confidence_unmask", temperature=0.0)
    ours = sample_confidence_unmask(model_logits, [0, 1, 2], LENGTH, steps, MASK, seed=0, sampler=cfg, top_p=0.9)
    start = torch.full((3, LENGTH), MASK, dtype=torch.long)
    assert torch.equal(ours.tokens, reference_generate(start, steps, 0.0, None))
    assert (ours.tokens != MASK).all() and ours.nfe == [min(steps, LENGTH)] * 3
    assert ours.remasks == [[], [], []]  # never revisits


def test_confidence_unmasking_at_a_temperature_is_llada_given_the_same_uniforms():
    """Our draw (Gumbel-max over softmax(logits/τ), one uniform per non-[MASK] id of each masked row, row by
    row) is LLaDA's exp(logits)/(−log u)^τ argmax when u are the same numbers."""
    steps, tau, n = 8, 0.7, 2
    cfg = SamplerConfig(name="confidence_unmask", temperature=tau)
    ours = sample_confidence_unmask(model_logits, list(range(n)), LENGTH, steps, MASK, seed=3, sampler=cfg,
                                    top_p=1.0)
    generators = sample_generators(3, list(range(n)))
    non_mask = [v for v in range(VOCAB) if v != MASK]

    def uniforms(step: int, x: torch.Tensor) -> torch.Tensor:
        u = torch.full((n, LENGTH, VOCAB), 0.5, dtype=torch.float64)
        for j in range(n):
            for pos in (x[j] == MASK).nonzero().flatten().tolist():
                u[j, pos, non_mask] = torch.rand(len(non_mask), generator=generators[j], dtype=torch.float64)
        return u

    assert torch.equal(ours.tokens, reference_generate(torch.full((n, LENGTH), MASK), steps, tau, uniforms))


def test_confidence_unmasking_runs_through_the_registry_and_config():
    cfg = composed("sampler=confidence_unmask")
    assert cfg.sampler.temperature == 0.0
    validate_sample_config(cfg, sampler_names())
    assert get_sampler("confidence_unmask") is sample_confidence_unmask
    with pytest.raises(ValueError, match="temperature"):
        validate_sample_config(composed("sampler=remdm_loop", "sampler.temperature=0"), sampler_names())


# --- DSL-LLaDA's SDE settings, transcribed ----------------------------------------------------------


def reference_sensitive_snrs(heun_steps: int) -> list[float]:
    snr_min = 0.01
    n1 = max(1, int(heun_steps * 0.05))
    n2 = max(1, int(heun_steps * 0.90))
    n3 = heun_steps - n1 - n2
    return torch.cat([
        torch.exp(torch.linspace(math.log(snr_min), math.log(7), n1 + 1, dtype=torch.float64)),
        torch.exp(torch.linspace(math.log(7), math.log(74), n2 + 1, dtype=torch.float64))[1:],
        torch.exp(torch.linspace(math.log(74), math.log(100), n3 + 1, dtype=torch.float64))[1:],
    ]).tolist()


@pytest.mark.parametrize("points", [3, 8, 16, 32, 64])
def test_snr_schedule_is_dsl_lladas_sensitive_schedule(points):
    ours, theirs = dsl_llada_snr_points(points), reference_sensitive_snrs(points - 1)
    assert len(ours) == len(theirs) == points
    assert ours == pytest.approx(theirs, rel=1e-12)
    inside = sum(7.0 <= s <= 74.0 for s in ours[1:]) / (points - 1)
    assert points < 16 or inside >= 0.85  # most steps where the posterior moves


def test_noise_rule_is_dsl_lladas_adaptive_rule():
    assert [dsl_llada_noise_scale(n) for n in (8, 16, 32, 64, 128)] == [0.1, 0.05, 0.01, 0.005, 0.005]


def test_top_k_posterior_mean_is_dsl_lladas():
    logits = torch.randn(2, 5, VOCAB, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keys = torch.randn(VOCAB, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for k in (1, 4, VOCAB):
        bp = torch.softmax(logits, dim=-1)
        tv, ti = bp.topk(k, dim=-1)
        expected = ((tv / tv.sum(-1, keepdim=True))[..., None] * keys[ti]).sum(-2)
        assert torch.allclose(posterior_mean(logits, keys, 0.5, top_k=k), expected, atol=1e-12)


MICRO = ModelConfig(name="micro", hidden=32, n_blocks=1, n_heads=2, cond_dim=16, seq_len=LENGTH)


def dsl_model() -> torch.nn.Module:
    return build_dit(MICRO, VOCAB, seed=0, objective=ObjectiveConfig(name="dsl", key_dim=8), mask_id=MASK)


def test_inference_beta_sharpens_the_converter_and_restores_it():
    model = dsl_model()
    denoise = ModelDenoiser(model, batch_invariant=False)
    z = torch.randn(1, LENGTH, 8, generator=torch.Generator().manual_seed(0))
    trained = model.converter.beta.detach().clone()
    with sharpened(denoise, 2.0):
        sharp = model.converter.slot_probs(z)[0]
    assert torch.equal(model.converter.beta.detach(), trained)
    model.converter.beta.data.mul_(2.0)
    assert torch.allclose(sharp, model.converter.slot_probs(z)[0])


def test_dsl_llada_preset_composes_and_samples(process_group):
    cfg = composed("sampler=dsl_llada_sde", "steps=4")
    s = cfg.sampler
    assert (s.name, s.snr_schedule, s.noise_rule, s.x_hat_top_k, s.beta_scale) == ("dsl_continuous", "dsl_llada",
                                                                                   "dsl_llada", 512, 2.0)
    validate_sample_config(cfg, sampler_names())
    result = sample_dsl_continuous(ModelDenoiser(dsl_model(), batch_invariant=False), [0, 1], LENGTH, 4, MASK, 0, s)
    assert result.nfe == [8, 8] and (result.tokens != MASK).all()
    loop_short = composed("sampler=remdm_loop_short").sampler
    assert (loop_short.name, loop_short.t_on, loop_short.eta) == ("remdm_loop", 0.25, 0.05)
    validate_sample_config(composed("sampler=remdm_loop_short"), sampler_names())


# --- AR ---------------------------------------------------------------------------------------------------


def test_ar_sampler_is_ancestral_with_temperature():
    """Token i from softmax(logits of the prefix's last position / τ), drawn by Gumbel-max with one uniform
    per non-[MASK] id from the sample's generator; the model only ever sees the prefix."""
    seen = []

    def causal(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[1])
        return model_logits(x)

    tau, n = 1.3, 2
    ours = sample_ar(causal, list(range(n)), LENGTH, 99, MASK, seed=5, sampler=SamplerConfig(name="ar",
                                                                                          temperature=tau),
                     top_p=1.0)
    assert seen == list(range(1, LENGTH)) and ours.nfe == [LENGTH - 1] * n
    generators = sample_generators(5, list(range(n)))
    for j in range(n):
        x = [MASK - 1]
        for _ in range(1, LENGTH):
            logits = model_logits(torch.tensor([x])).double()[0, -1]
            logits[MASK] = -1e6
            log_p = torch.log_softmax(logits / tau, dim=-1)
            ids = (log_p.exp() > 0).nonzero().flatten()
            x.append(int(ids[(log_p[ids] + gumbel_noise((len(ids),), generators[j])).argmax()]))
        assert ours.tokens[j].tolist() == x


def test_ar_sampler_and_diffusion_samplers_refuse_the_wrong_checkpoint():
    mdlm = build_dit(MICRO, VOCAB, seed=0, mask_id=MASK)
    with pytest.raises(ValueError, match="objective=ar"):
        check_model_fits("ar", mdlm, "runs/mdlm")
    causal = build_dit(MICRO, VOCAB, seed=0, causal=True, mask_id=MASK)
    with pytest.raises(ValueError, match="sampler=ar"):
        check_model_fits("remdm_loop", causal, "runs/ar")
    check_model_fits("ar", causal, "runs/ar")
    validate_sample_config(composed("sampler=ar"), sampler_names())


# --- temperature and the remask trace ------------------------------------------------------------------


def test_remdm_temperature_draws_from_the_tempered_nucleus():
    """With τ, a token unmasked by the step is drawn from softmax(logits/τ): τ → small makes it the argmax."""
    cold = sample(model_logits, [0, 1], LENGTH, 4, MASK, 0, SamplerConfig(name="mdlm", temperature=1e-4), top_p=1.0)
    for row in cold.psi:
        assert (row[row > 0] > 0.999).all()


def test_remask_trace_records_every_realised_remask():
    snapshots = []
    cfg = SamplerConfig(name="remdm_loop", eta=0.1)
    result = sample(model_logits, [0, 1, 2], LENGTH, 16, MASK, 0, cfg, top_p=1.0,
                    trace=lambda k, t, x: snapshots.append((k, x.clone())))
    previous = torch.full((3, LENGTH), MASK)
    for k, x in snapshots:
        for i in range(3):
            sent_back = ((previous[i] != MASK) & (x[i] == MASK)).nonzero().flatten().tolist()
            recorded = [e for e in result.remasks[i] if e[0] == k]
            assert [e[1] for e in recorded] == sent_back
            assert [e[2] for e in recorded] == previous[i, sent_back].tolist()
        previous = x
    assert sum(len(r) for r in result.remasks) > 0
    assert sample(model_logits, [0], LENGTH, 16, MASK, 0, SamplerConfig(name="mdlm")).remasks == [[]]
