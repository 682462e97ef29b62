"""Ancestral sampling of an objective=ar checkpoint (the same DiT with causal attention, logits at i predicting
token i + 1): position 0 is BOS, then each of the L − 1 other positions is drawn from the nucleus of
softmax(logits / τ) given everything before it. No KV cache: each step runs the prefix again (NFE = L − 1
forwards per sequence, the last of length L − 1, the length the model was trained at). `steps` is not read.
"""

from __future__ import annotations

import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.sampling.config import ARSampler
from dsl_scale.sampling.generate import Denoiser, SampleResult, sample_generators, state_device
from dsl_scale.sampling.steps import gumbel_noise, nucleus_rows


@torch.no_grad()
def sample_ar(denoise: Denoiser, indices: list[int], seq_len: int, steps: int, mask_id: int, seed: int,
              sampler: ARSampler | None = None, top_p: float = 0.9, bos_id: int | None = None) -> SampleResult:
    """Samples `indices` left to right. BOS is the id the AR checkpoint's data put first; by default the
    tokenizer's convention that BOS is the [MASK] id − 1 (`bos_id` overrides it)."""
    sampler = sampler or ARSampler(name="ar")
    device = state_device(denoise)
    n = len(indices)
    bos = mask_id - 1 if bos_id is None else bos_id
    x = torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    x[:, 0] = bos
    psi = torch.zeros(n, seq_len, dtype=torch.float64, device=device)
    psi[:, 0] = 1.0
    generators = sample_generators(seed, indices, device)
    for pos in range(1, seq_len):
        logits = suppress_mask_logit_(denoise(x[:, :pos]).float()[:, -1], mask_id) / sampler.temperature
        for i, ((ids, probs), generator) in enumerate(zip(nucleus_rows(logits, top_p, sampler.nucleus), generators)):
            pick = (probs.log() + gumbel_noise((len(ids),), generator)).argmax()
            x[i, pos], psi[i, pos] = ids[pick], probs[pick]
    return SampleResult(tokens=x, nfe=[seq_len - 1] * n, psi=psi, remasks=[[] for _ in range(n)])
