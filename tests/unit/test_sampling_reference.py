"""The MDLM / ReMDM samplers against a transcription of kuleshov-group/remdm's step rule (docs/method.md §5).

`reference_categorical` transcribes `_ddpm_caching_update` (diffusion.py of kuleshov-group/remdm) for
one step of its sampling loop: SUBS x_θ (visible rows one-hot), its nucleus (cumulative mass ≤ p plus
the top-1), move chances t and t − dt with dt = (1 − 1e-5)/T, and the branch of each sampler, loop's
phases chosen by t alone. Its sampler draws argmax(q / E), E ~ Exp(1), on unnormalised q, so the
categorical is max(q, 0) normalised per row. It lives here, not in the package, on purpose.

Our sampler draws in two Gumbel stages (generate.py); test_sampling.py shows that they multiply out to
`remdm_step_probs` composed with the nucleus. Here that dense categorical, with the schedule's α/σ at
each step of our time grid, must equal the transcription at every step of a trajectory (drawn by our own
step), for T ∈ {8, 16, 32, 128}, every mode, top-p ∈ {1, 0.9}.
"""

from __future__ import annotations

import pytest
import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.sampling.config import SamplerConfig
from dsl_scale.sampling.generate import _step_one, sample, time_grid
from dsl_scale.sampling.schedules import SCHEDULES
from dsl_scale.sampling.steps import nucleus_rows, remdm_step_probs
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)

VOCAB, MASK, LENGTH = 40, 39, 24
F64 = torch.float64
MODES = {"mdlm": "mdlm", "remdm_cap": "remdm-cap", "remdm_rescale": "remdm-rescale", "remdm_conf": "remdm-conf",
         "remdm_loop": "remdm-loop"}
ETA = {"remdm_cap": 0.05, "remdm_rescale": 0.3, "remdm_loop": 0.05}


def model_logits(x: torch.Tensor) -> torch.Tensor:
    """A fixed 'model' whose peaked logits depend on the whole state, so every step sees new x_θ."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 3
    return table[x] + 0.05 * x.float().cumsum(-1)[..., None]


# --- the transcription ------------------------------------------------------------------------------


def reference_categorical(mode: str, x: torch.Tensor, logits: torch.Tensor, t: float, dt: float, cfg: SamplerConfig,
                          conf: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(categorical [L, V], nucleus p_x0 [L, V]) of one reference step from x [L] at time t."""
    logits = logits.double().clone()
    logits[:, MASK] = -torch.inf
    p_x0 = torch.softmax(logits, dim=-1)
    unmasked = x != MASK
    p_x0[unmasked] = torch.nn.functional.one_hot(x[unmasked], VOCAB).double()  # SUBS carry-over
    if top_p < 1:
        sorted_probs, order = p_x0.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) <= top_p
        keep[..., 0] = True
        nucleus = sorted_probs * keep
        nucleus = nucleus / nucleus.sum(dim=-1, keepdim=True)
        p_x0 = torch.zeros_like(p_x0).scatter_(-1, order, nucleus)
    mc_t, mc_s = t, t - dt

    def mdlm_branch(mc_t: float, mc_s: float) -> torch.Tensor:
        q = p_x0 * (mc_t - mc_s)
        q[:, MASK] = mc_s
        copy = torch.nn.functional.one_hot(x, VOCAB).double()
        return torch.where(unmasked[:, None], copy, q)

    def remdm_branch(alpha_t: float, alpha_s: float, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma[:, None]
        q = p_x0 * (1 - sigma)
        q[:, MASK] = sigma[:, 0]
        q2 = p_x0 * ((alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t))
        q2[:, MASK] = ((1 - alpha_s - sigma * alpha_t) / (1 - alpha_t))[:, 0]
        return torch.where(unmasked[:, None], q, q2)

    alpha_t, alpha_s = 1 - mc_t, 1 - mc_s
    sigma_max = min(1.0, (1 - alpha_s) / alpha_t) if alpha_t > 0 else 1.0
    full = lambda value: torch.full((x.shape[0],), value, dtype=F64)  # noqa: E731
    if mode == "mdlm":
        q = mdlm_branch(mc_t, mc_s)
    elif mode == "remdm-cap":
        q = remdm_branch(alpha_t, alpha_s, full(min(cfg.eta, (1 - alpha_s) / alpha_t) if alpha_t > 0 else cfg.eta))
    elif mode == "remdm-rescale":
        q = remdm_branch(alpha_t, alpha_s, full(cfg.eta * sigma_max))
    elif mode == "remdm-conf":
        eta = torch.softmax(conf, dim=-1)
        eta[~unmasked] = 0
        q = remdm_branch(alpha_t, alpha_s, (eta * sigma_max).nan_to_num(0.0))
    elif mode == "remdm-loop":
        if t > cfg.t_on:
            q = mdlm_branch(1 - (1 - t) * cfg.alpha_on / (1 - cfg.t_on),
                            1 - (1 - t + dt) * cfg.alpha_on / (1 - cfg.t_on))
        elif t <= cfg.t_off:
            q = mdlm_branch(t * (1 - cfg.alpha_on) / cfg.t_off, (t - dt) * (1 - cfg.alpha_on) / cfg.t_off)
        else:
            a = cfg.alpha_on
            q = remdm_branch(a, a, full(cfg.eta))
    else:
        raise ValueError(mode)
    q = q.clamp_min(0.0)
    return q / q.sum(dim=-1, keepdim=True), p_x0


# --- ours, step by step -----------------------------------------------------------------------------


def our_categorical(name: str, cfg: SamplerConfig, x, logits, psi, t, s, top_p) -> tuple:
    """remdm_step_probs composed with the compact nucleus the sampler draws tokens from, with the schedule's
    α/σ; also returns what _step_one needs."""
    masked = x == MASK
    alpha_t, alpha_s, sigma = SCHEDULES[name](cfg, t, s, psi[None], (~masked)[None])
    x_theta = torch.zeros(LENGTH, VOCAB, dtype=F64)
    for row, (ids, probs) in zip(x_theta, nucleus_rows(logits, top_p)):
        row[ids] = probs
    probs = remdm_step_probs(x, x_theta, alpha_t, alpha_s, sigma[0], MASK)
    return probs / probs.sum(dim=-1, keepdim=True), (alpha_t, alpha_s, sigma[0])


@pytest.mark.parametrize("top_p", [1.0, 0.9])
@pytest.mark.parametrize("name", sorted(MODES))
@pytest.mark.parametrize("steps", [8, 16, 32, 128])
def test_every_step_draws_the_reference_categorical(steps, name, top_p):
    cfg = SamplerConfig(name=name, eta=ETA.get(name, 0.0))
    grid = time_grid(steps)
    assert len(grid) == steps + 1 and grid[0] == 1.0 and grid[-1] == pytest.approx(1e-5)
    dt = (1 - 1e-5) / steps
    x = torch.full((LENGTH,), MASK, dtype=torch.long)
    psi = torch.zeros(LENGTH, dtype=F64)
    conf = torch.full((LENGTH,), -torch.inf, dtype=F64)  # the reference's remdm-conf state
    generator = torch.Generator().manual_seed(steps)
    changed = 0
    for k in range(steps):
        t = 1.0 - k * dt  # the reference's timesteps[k]
        assert grid[k] == pytest.approx(t, abs=1e-12) and grid[k + 1] == pytest.approx(t - dt, abs=1e-12)
        logits = suppress_mask_logit_(model_logits(x[None])[0].float(), MASK)
        ref, p_x0 = reference_categorical(MODES[name], x, logits, t, dt, cfg, conf, top_p)
        ours, coefficients = our_categorical(name, cfg, x, logits, psi, grid[k], grid[k + 1], top_p)
        where = f"step {k} (t = {t:.4f})"
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6, msg=lambda m, where=where: f"{where}: {m}")
        before = x.clone()
        _step_one(x, psi, x == MASK, logits, *coefficients, MASK, top_p, generator)
        unmasked_now, remasked_now = (before == MASK) & (x != MASK), (before != MASK) & (x == MASK)
        conf[unmasked_now] = -p_x0[unmasked_now, x[unmasked_now]]
        conf[remasked_now] = -torch.inf
        changed += int((x != before).any())
    assert changed > 0


@pytest.mark.parametrize("name", sorted(MODES))
def test_t_steps_then_a_noise_removal_pass(name):
    """T random steps down to t = 1e-5, then one argmax pass that only fills masks: T + 1 forwards
    without caching, as the reference counts them."""
    cfg = SamplerConfig(name=name, eta=ETA.get(name, 0.0))
    states: list[tuple[int, float, torch.Tensor]] = []
    result = sample(model_logits, [0, 1], LENGTH, 8, MASK, seed=3, sampler=cfg, cache=False,
                    trace=lambda k, s, x: states.append((k, s, x.clone())))
    assert [k for k, _, _ in states] == list(range(9))
    assert [s for _, s, _ in states][-2:] == pytest.approx([1e-5, 1e-5])
    before, after = states[-2][2], states[-1][2]
    assert torch.equal(after[before != MASK], before[before != MASK]) and not (after == MASK).any()
    assert result.nfe == [9, 9]
