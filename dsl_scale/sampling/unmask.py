"""Confidence-ordered unmasking (MaskGIT / LLaDA's "low_confidence" rule), as fengsxy/DSL-LLaDA's "standard"
decoder runs it (one block over the whole sequence, no classifier-free guidance).

T steps. Step k: one forward of the current state; at every masked position draw x0 (the argmax at temperature
0, else a draw from the nucleus of softmax(logits / τ)); its confidence is the untempered softmax probability
of x0; the n_k most confident masked positions take their x0, the others stay masked. Visible tokens are never
revisited. n_k splits the M masked positions of the start evenly over the T steps, the remainder going to the
first steps (n_k = ⌊M/T⌋ + [k < M mod T]), so everything is unmasked after T steps. NFE ≤ T (a step that
unmasks nothing, when T > M, is skipped).
"""

from __future__ import annotations

import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.sampling.config import ConfidenceUnmaskSampler
from dsl_scale.sampling.generate import Denoiser, SampleResult, sample_generators, state_device
from dsl_scale.sampling.steps import gumbel_noise, nucleus_rows
from dsl_scale.sampling.visible_channel import VisibleThroughChannel


def transfer_counts(masked: int, steps: int) -> list[int]:
    """How many positions each of the `steps` steps unmasks: ⌊masked/steps⌋, one more for the first
    masked mod steps steps."""
    base, extra = divmod(masked, steps)
    return [base + (k < extra) for k in range(steps)]


def draw_x0(logits: torch.Tensor, temperature: float, top_p: float, nucleus: str,
            generator: torch.Generator) -> torch.Tensor:
    """x0 [k] from logit rows [k, V] ([MASK] suppressed): argmax at temperature 0; otherwise a Gumbel-max draw
    over the nucleus of softmax(logits / τ) (one uniform per nucleus id, row by row)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    picks = []
    for ids, probs in nucleus_rows(logits / temperature, top_p, nucleus):
        picks.append(ids[(probs.log() + gumbel_noise((len(ids),), generator)).argmax()])
    return torch.stack(picks) if picks else torch.zeros(0, dtype=torch.long, device=logits.device)


@torch.no_grad()
def sample_confidence_unmask(denoise: Denoiser, indices: list[int], seq_len: int, steps: int, mask_id: int,
                             seed: int, sampler: ConfidenceUnmaskSampler | None = None,
                             top_p: float = 1.0) -> SampleResult:
    """Samples `indices` with confidence-ordered unmasking (module docstring); top_p applies at τ > 0 only."""
    sampler = sampler or ConfidenceUnmaskSampler(name="confidence_unmask")
    if getattr(sampler, "visible_snr", None) is not None:
        denoise = VisibleThroughChannel(denoise, sampler.visible_snr, mask_id)
    device = state_device(denoise)
    n = len(indices)
    x = torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    psi = torch.zeros(n, seq_len, dtype=torch.float64, device=device)
    generators = sample_generators(seed, indices, device)
    counts = transfer_counts(seq_len, steps)
    nfe = [0] * n
    for k in range(steps):
        if counts[k] == 0:  # counts never rise again: T > L, everything is already visible
            break
        logits = suppress_mask_logit_(denoise(x).float(), mask_id)
        nfe = [c + 1 for c in nfe]
        for i, generator in enumerate(generators):
            masked = (x[i] == mask_id).nonzero().flatten()
            x0 = draw_x0(logits[i, masked], sampler.temperature, top_p, sampler.nucleus, generator)
            probs = torch.softmax(logits[i, masked].double(), dim=-1)
            confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
            # ties go to the earlier position (a stable sort), as torch.topk does on CPU for equal values
            chosen = torch.sort(-confidence, stable=True).indices[:counts[k]]
            x[i, masked[chosen]] = x0[chosen]
            psi[i, masked[chosen]] = confidence[chosen]
    return SampleResult(tokens=x, nfe=nfe, psi=psi, remasks=[[] for _ in range(n)])
