"""remdm_confidence (the DSL paper's mechanism): remasking driven by the model's current confidence in each
visible token, from the same forward (sampling/schedules.py `confidence`, generate.py)."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.sampling.config import SamplerConfig, validate_sample_config
from dsl_scale.sampling.denoiser import ModelDenoiser
from dsl_scale.sampling.generate import discrete_phase, sample, sample_generators, visible_confidence
from dsl_scale.sampling.registry import check_model_fits, get_sampler, sampler_names
from dsl_scale.sampling.schedules import SCHEDULES, loop
from dsl_scale.sampling.steps import remdm_step_probs, top_p_filter
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)

F64 = torch.float64
VOCAB, MASK = 8, 7
# Logits at every position favour token 0 strongly, token 1 mildly: visible 0s are believed, visible 3s
# (logit 0) doubted. They do not depend on the state, so the test can compute x_θ itself.
ROW = torch.tensor([6.0, 2.0, 1.0, 0.0, -1.0, 0.5, 0.0, -30.0])


def fixed_model(ids: torch.Tensor) -> torch.Tensor:
    return ROW.expand(*ids.shape, VOCAB).clone()


def config(**kw) -> SamplerConfig:
    return SamplerConfig(**{"name": "remdm_confidence", "eta": 0.05, **kw})


def direct_rule(x: torch.Tensor, cfg: SamplerConfig, top_p: float) -> torch.Tensor:
    """The rule written out: in loop's middle phase α_t = α_s = α_on; a visible token ℓ with current
    probability c^ℓ is remasked with σ^ℓ = min(σ_max, η·(1 − c^ℓ)/mean_visible(1 − c)), a masked
    position takes a token with prob x_θ[v]·σα_on/(1 − α_on) (σ = η), else stays masked."""
    a = cfg.alpha_on
    probs = torch.softmax(ROW.double(), -1)
    doubt = 1 - probs[x]
    visible = x != MASK
    sigma = (cfg.eta * doubt / doubt[visible].mean()).clamp(max=(1 - a) / a)
    out = torch.zeros(len(x), VOCAB, dtype=F64)
    nucleus = top_p_filter(torch.softmax(ROW.double().clone().index_fill_(0, torch.tensor(MASK), -torch.inf), -1),
                           top_p)
    for pos, token in enumerate(x.tolist()):
        if token == MASK:
            out[pos] = nucleus * cfg.eta * a / (1 - a)
            out[pos, MASK] = (1 - a - a * cfg.eta) / (1 - a)
        else:
            out[pos, token], out[pos, MASK] = 1 - sigma[pos], sigma[pos]
    return out


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_step_categorical_is_the_rule(top_p):
    x = torch.tensor([0, 3, MASK, 0, 1, 3, MASK, 2])
    cfg = config()
    t, s = 0.3, 0.29  # the middle phase
    logits = [fixed_model(x[None])[0]]
    conf = visible_confidence(logits, x[None])
    torch.testing.assert_close(conf[0, x != MASK], torch.softmax(ROW.double(), -1)[x[x != MASK]])
    alpha_t, alpha_s, sigma = SCHEDULES["remdm_confidence"](cfg, t, s, conf, (x != MASK)[None])
    nucleus = top_p_filter(torch.softmax(logits[0].double().index_fill(-1, torch.tensor(MASK), -torch.inf), -1),
                           top_p)
    ours = remdm_step_probs(x, nucleus, alpha_t, alpha_s, sigma[0], MASK)
    torch.testing.assert_close(ours, direct_rule(x, cfg, top_p), rtol=0, atol=1e-12)
    # the budget: as many expected remaskings as remdm_loop's η per visible token
    assert float(sigma[0, x != MASK].sum()) == pytest.approx(cfg.eta * int((x != MASK).sum()))
    # outside the middle phase it is remdm_loop (MDLM steps)
    for t, s in ((0.8, 0.79), (0.04, 0.03)):
        ours = SCHEDULES["remdm_confidence"](cfg, t, s, conf, (x != MASK)[None])
        theirs = loop(cfg, t, s, conf, (x != MASK)[None])
        assert ours[:2] == theirs[:2] and torch.equal(ours[2], theirs[2])


def test_the_sampler_remasks_with_those_frequencies():
    """One middle-phase step of the sampler itself, 4,000 independent sequences from the same state:
    remasking frequencies per position follow σ^ℓ from the model's current confidence (not ψ, which is 0)."""
    x0 = torch.tensor([0, 3, MASK, 0, 1, 3, MASK, 2])
    cfg = config(eta=0.1)
    n = 4000
    after: list[torch.Tensor] = []
    discrete_phase(fixed_model, x0.expand(n, -1).clone(), torch.zeros(n, len(x0), dtype=F64), [0.3, 0.29],
                   sample_generators(0, list(range(n))), cfg, SCHEDULES["remdm_confidence"], MASK, 1.0,
                   trace=lambda k, s, x: after.append(x.clone()) if k == 0 else None)
    remasked = ((after[0] == MASK) & (x0 != MASK)).double().mean(0)
    expected = direct_rule(x0, cfg, 1.0)[:, MASK].where(x0 != MASK, torch.zeros((), dtype=F64))
    assert (remasked - expected).abs().max() < 0.02, (remasked, expected)  # binomial std ≤ 0.008
    assert remasked[1] > 5 * remasked[0]  # the doubted 3 far more often than the believed 0


class Counting:
    def __init__(self):
        self.rows = 0
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(1)) * 0.5

    def __call__(self, ids):
        self.rows += ids.shape[0]
        return self.table[ids] + 0.1 * ids.float().cumsum(-1)[..., None]


@pytest.mark.parametrize("steps", [8, 32])
def test_nfe_is_remdm_loops(steps):
    """The confidence comes from the forward that gives x_θ: no extra evaluation, uncached T + 1 like
    remdm_loop, and with the cache every counted NFE is a forward that ran."""
    for cache in (False, True):
        counts = {}
        for name in ("remdm_loop", "remdm_confidence"):
            denoise = Counting()
            result = sample(denoise, [0, 1, 2], 16, steps, MASK, seed=0, sampler=config(name=name), cache=cache)
            assert denoise.rows == sum(result.nfe)
            counts[name] = result.nfe
        if not cache:
            assert counts["remdm_loop"] == counts["remdm_confidence"] == [steps + 1] * 3


def test_samples_are_a_function_of_seed_and_index():
    run = lambda idx: sample(Counting(), idx, 16, 16, MASK, seed=4, sampler=config(), top_p=1.0)  # noqa: E731
    together, alone = run([3, 5, 9]), run([5])
    assert torch.equal(alone.tokens[0], together.tokens[1]) and alone.nfe[0] == together.nfe[1]
    assert not torch.equal(together.tokens[0], together.tokens[2])
    assert get_sampler("remdm_confidence") is sample


def test_config_composes_and_validates():
    from tests.unit.test_sampling_config import composed

    cfg = composed("sampler=remdm_confidence")
    assert (cfg.sampler.name, cfg.sampler.eta, cfg.sampler.alpha_on, cfg.sampler.visible_snr) == (
        "remdm_confidence", 0.02, 0.9, None)
    validate_sample_config(cfg, sampler_names())
    with pytest.raises(ValueError, match="visible_snr"):
        validate_sample_config(composed("sampler=remdm_confidence", "sampler.visible_snr=-1"), sampler_names())
    with pytest.raises(ValueError, match="eta"):
        validate_sample_config(composed("sampler=remdm_confidence", "sampler.eta=0.5"), sampler_names())


# --- DSL and MDLM checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("visible_snr", [None, 10.0])
def test_micro_dit_checkpoints(process_group, visible_snr):
    """Usable with a DSL checkpoint (embedding path or, visible_snr, through the converter) and with an
    MDLM one (embedding path only; visible_snr names what it needs)."""
    from tests.unit.test_sampling_dsl import DIT_MASK, micro_dit

    cfg = config(visible_snr=visible_snr)
    denoise = ModelDenoiser(micro_dit(dsl=True))
    run = lambda idx: sample(denoise, idx, 16, 8, DIT_MASK, seed=1, sampler=cfg)  # noqa: E731
    together, alone = run([0, 1, 2]), run([2])
    assert not (together.tokens == DIT_MASK).any() and torch.equal(alone.tokens[0], together.tokens[2])
    mdlm = ModelDenoiser(micro_dit(dsl=False))
    if visible_snr is None:
        assert not (sample(mdlm, [0], 16, 8, DIT_MASK, seed=1, sampler=cfg).tokens == DIT_MASK).any()
    else:
        with pytest.raises(ValueError, match="DSL checkpoint"):
            sample(mdlm, [0], 16, 8, DIT_MASK, seed=1, sampler=cfg)
        with pytest.raises(ValueError, match="runs/mdlm.*visible_snr null"):  # the driver's check, before any work
            check_model_fits("remdm_confidence", mdlm.model, "runs/mdlm", visible_snr)
        check_model_fits("remdm_confidence", denoise.model, "runs/dsl", visible_snr)


def test_visible_tokens_reach_the_model_as_channel_observations():
    """visible_snr: the model sees z = s·K_x at visible positions and z = 0 at masked ones."""
    from dsl_scale.sampling.visible_channel import VisibleThroughChannel

    class Recorder:
        keys = torch.nn.functional.normalize(torch.arange(1.0, 1.0 + VOCAB * 3).reshape(VOCAB, 3), dim=-1)

        def from_z(self, z):
            self.z = z
            return torch.zeros(*z.shape[:2], VOCAB)

    recorder = Recorder()
    ids = torch.tensor([[2, MASK, 5]])
    VisibleThroughChannel(recorder, 7.0, MASK)(ids)
    expected = torch.stack([7.0 * Recorder.keys[2], torch.zeros(3), 7.0 * Recorder.keys[5]])[None]
    torch.testing.assert_close(recorder.z, expected)
