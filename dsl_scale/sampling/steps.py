"""Sampler step rules as pure functions of tensors (docs/method.md §5). Probabilities in fp64.

A step's categorical, per position, has V outcomes: the token ids, where the [MASK] id means
"(stay or become) masked". `remdm_step_probs` writes it out densely (the reference definition);
samplers draw from it in two stages that give exactly the same distribution (`transition_groups`).
"""

from __future__ import annotations

import torch

# Nucleus rules over the ids sorted by descending probability, with cumulative mass m_i up to and
# including id i: "reference" (kuleshov-group/remdm, docs/method.md §5) keeps m_i ≤ p plus always the top-1;
# "crossing" keeps m_i − p_i < p, i.e. also the id that crosses p (the smallest set reaching p).
NUCLEUS_RULES = ("reference", "crossing")


def _in_nucleus(sorted_probs: torch.Tensor, top_p: float, rule: str) -> torch.Tensor:
    mass = sorted_probs.cumsum(dim=-1)
    if rule == "crossing":
        return (mass - sorted_probs) < top_p
    if rule != "reference":
        raise ValueError(f"nucleus rule {rule!r} is not one of {NUCLEUS_RULES}")
    kept = mass <= top_p
    kept[..., 0] = True
    return kept


def top_p_filter(probs: torch.Tensor, top_p: float, rule: str = "reference") -> torch.Tensor:
    """Nucleus truncation under `rule` (NUCLEUS_RULES), renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    sorted_probs = torch.where(_in_nucleus(sorted_probs, top_p, rule), sorted_probs, torch.zeros_like(sorted_probs))
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def nucleus_rows(logits: torch.Tensor, top_p: float,
                 rule: str = "reference") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Compact x_θ nuclei of logit rows [k, V] ([MASK] already suppressed): per row (ids, probs fp64),
    ids by descending probability (when top_p < 1). The same distribution as
    top_p_filter(softmax(logits), top_p, rule) (both rules keep a prefix of the sorted ids), but sorting
    only a candidate prefix: ids are binned by logit gap to the row's best (bins are monotone
    in probability, so each bin set is a prefix of the sorted order) and the first bins whose mass
    reaches top_p are sorted. If rounding makes that prefix fall short, the whole row is sorted.
    """
    probs = torch.softmax(logits.double(), dim=-1)
    if top_p >= 1.0:
        return [(row.nonzero().flatten(), row[row > 0]) for row in probs]
    rows = []
    for logit_row, row in zip(logits.float(), probs):
        bins = ((logit_row.max() - logit_row) * _BINS_PER_NAT).clamp(max=_N_BINS - 1).long()
        mass = torch.bincount(bins, weights=row, minlength=_N_BINS).cumsum(dim=0)
        threshold = torch.tensor([top_p], dtype=torch.float64, device=mass.device)
        last = int(torch.searchsorted(mass, threshold).clamp(max=_N_BINS - 1))
        candidates = (bins <= last).nonzero().flatten()
        v, order = row[candidates].sort(descending=True)
        i = candidates[order]
        if v.sum() < top_p:
            v, i = row.sort(descending=True)
        kept = _in_nucleus(v, top_p, rule)
        rows.append((i[kept], v[kept] / v[kept].sum()))
    return rows


_BINS_PER_NAT = 4
_N_BINS = 256


def sigma_max(alpha_t: float, alpha_s: float) -> float:
    """Largest remasking probability that keeps the ReMDM step a distribution: min(1, (1 − α_s)/α_t)."""
    return 1.0 if alpha_t <= 0 else min(1.0, (1.0 - alpha_s) / alpha_t)


def transition_groups(
    masked: torch.Tensor, alpha_t: float, alpha_s: float, sigma: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(stay), P(leave)) per position [..., L] for a ReMDM step t → s with remasking σ (σ = 0: MDLM).

    Unmasked: stay 1 − σ, leave (to [MASK]) σ. Masked: stay (1 − α_s − σα_t)/(1 − α_t), leave (to a
    token drawn from x_θ) (α_s − (1 − σ)α_t)/(1 − α_t). Both written as in docs/method.md §5, not as 1 − other.
    A negative value (remdm_loop's step across t_on can have α_s > 1) counts as 0 and the pair is
    renormalised, which is what the reference's sampler does with it (a race that a mass ≤ 0 never wins).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=masked.device).expand(masked.shape)
    unmask_stay = ((1 - alpha_s - sigma * alpha_t) / (1 - alpha_t)).clamp_min(0.0)
    unmask_leave = ((alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t)).clamp_min(0.0)
    stay = torch.where(masked, unmask_stay, 1 - sigma)
    leave = torch.where(masked, unmask_leave, sigma)
    total = stay + leave
    return stay / total, leave / total


def remdm_step_probs(
    x: torch.Tensor, x_theta: torch.Tensor, alpha_t: float, alpha_s: float, sigma: torch.Tensor | float,
    mask_id: int,
) -> torch.Tensor:
    """The full categorical [..., L, V] of a ReMDM step (σ per position or scalar; σ = 0 is MDLM).

    x: [..., L] current ids; x_theta: [..., L, V] clean-token distribution (its [MASK] column is ignored).
    """
    masked = x == mask_id
    stay, leave = transition_groups(masked, alpha_t, alpha_s, sigma)
    tokens = x_theta.double().clone()
    tokens[..., mask_id] = 0.0
    tokens = tokens / tokens.sum(dim=-1, keepdim=True)
    from_masked = tokens * leave[..., None]
    from_masked[..., mask_id] = stay
    own = torch.zeros_like(tokens).scatter_(-1, x[..., None], stay[..., None])
    own[..., mask_id] = leave
    return torch.where(masked[..., None], from_masked, own)


def mdlm_step_probs(x: torch.Tensor, x_theta: torch.Tensor, t: float, s: float, mask_id: int) -> torch.Tensor:
    """MDLM ancestral step from time t to s < t with α = 1 − t: masked positions → v with
    x_θ[v]·(α_s − α_t)/(1 − α_t), [MASK] with (1 − α_s)/(1 − α_t); unmasked positions are copied."""
    return remdm_step_probs(x, x_theta, 1.0 - t, 1.0 - s, 0.0, mask_id)


def gumbel_max(probs: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
    """argmax(log p + g) with g standard Gumbel noise of the same shape (fp64)."""
    return (probs.double().log() + gumbel).argmax(dim=-1)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
    return -torch.log(-torch.log(u.clamp_min(1e-300)))
