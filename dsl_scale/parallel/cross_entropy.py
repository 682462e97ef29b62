"""Vocab-parallel cross-entropy over chunks of tokens: fp32 only one chunk at a time.

The logits stay in their own dtype (bf16 under mixed precision); each chunk of `chunk` tokens is upcast,
its [MASK] logit suppressed (SUBS, docs/method.md §3), and reduced over the TP group as megatron's
`vocab_parallel_cross_entropy` does (max, then the sum of exponentials and the target's logit, in one
all-reduce). The forward also writes the gradient's direction, softmax − one-hot, in the logits' dtype:
backward only scales it by the incoming per-token gradient, without a collective, and nothing fp32 of
the whole micro-batch is kept or recomputed. After the forward the logits themselves are no longer needed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state

DEFAULT_CHUNK_TOKENS = 4096  # ~0.8 GB of fp32 logits per chunk with GPT-2's vocabulary; one chunk for CPU benches
NEG_INF = -1e6  # diffusion/mdlm.py's SUBS value for the [MASK] logit

NllFn = Callable[..., torch.Tensor]  # (logits [..., V_local], targets [...], suppressed column | None) → nll [...]


def tensor_parallel_group() -> dist.ProcessGroup | None:
    """The TP group when there is more than one TP rank, else None (nothing to reduce)."""
    if parallel_state.model_parallel_is_initialized() and parallel_state.get_tensor_model_parallel_world_size() > 1:
        return parallel_state.get_tensor_model_parallel_group()
    return None


def tensor_parallel_vocab_start(vocab_local: int) -> int:
    """The first vocabulary id of this rank's logits (megatron splits the vocabulary into equal TP parts)."""
    if tensor_parallel_group() is None:
        return 0
    return parallel_state.get_tensor_model_parallel_rank() * vocab_local


def _shifted(chunk: torch.Tensor, row_max: torch.Tensor, suppress: torch.Tensor) -> torch.Tensor:
    return torch.where(suppress, NEG_INF, chunk.float()) - row_max[:, None]


def _fused_max(chunk: torch.Tensor, suppress: torch.Tensor) -> torch.Tensor:
    return torch.where(suppress, NEG_INF, chunk.float()).amax(dim=-1)


def _fused_sums(chunk: torch.Tensor, row_max: torch.Tensor, suppress: torch.Tensor, local: torch.Tensor,
                in_shard: torch.Tensor) -> torch.Tensor:
    x = _shifted(chunk, row_max, suppress)
    return torch.stack([x.exp().sum(dim=-1), x.gather(1, local[:, None]).squeeze(1) * in_shard])


def _fused_direction(chunk: torch.Tensor, row_max: torch.Tensor, sum_exp: torch.Tensor, suppress: torch.Tensor,
                     local: torch.Tensor, in_shard: torch.Tensor) -> torch.Tensor:
    probs = _shifted(chunk, row_max, suppress).exp() / sum_exp[:, None]
    one_hot = (torch.arange(chunk.shape[-1], device=chunk.device) == local[:, None]) & in_shard[:, None]
    return torch.where(suppress, 0.0, probs - one_hot.float()).to(chunk.dtype)


class FusedChunkMath:
    """The per-chunk steps as pure functions, each one read of the chunk once torch.compile'd (model.compile):
    the max; Σexp and the target's logit; softmax − one-hot in the logits' dtype. Eager, the in-place
    steps of `_ChunkedVocabParallelNLL` take fewer passes."""

    def __init__(self, compiled: bool = True) -> None:
        def compile_(fn):
            return torch.compile(fn, dynamic=True) if compiled else fn

        self.max, self.sums, self.direction = compile_(_fused_max), compile_(_fused_sums), compile_(_fused_direction)


class _ChunkedVocabParallelNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, suppressed: int | None, chunk: int,
                group: dist.ProcessGroup | None, fused: FusedChunkMath | None, with_grad: bool) -> torch.Tensor:
        vocab_local = logits.shape[-1]
        flat = logits.reshape(-1, vocab_local)
        local = targets.reshape(-1) - tensor_parallel_vocab_start(vocab_local)
        in_shard = (local >= 0) & (local < vocab_local)
        local = torch.where(in_shard, local, torch.zeros_like(local))
        nll = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        direction = torch.empty_like(flat) if with_grad else None  # (needs_input_grad is set under no_grad too)
        suppress = torch.arange(vocab_local, device=flat.device) == (-1 if suppressed is None else suppressed)
        for start in range(0, flat.shape[0], chunk):
            rows = slice(start, start + chunk)
            if fused is not None:
                row_max = fused.max(flat[rows], suppress)
            else:
                x = flat[rows].to(torch.float32, copy=True)
                if suppressed is not None:
                    x[:, suppressed] = NEG_INF
                row_max = x.amax(dim=-1)
            if group is not None:
                dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            if fused is not None:
                sums = fused.sums(flat[rows], row_max, suppress, local[rows], in_shard[rows])
            else:
                x.sub_(row_max[:, None])
                target_logit = x.gather(1, local[rows, None]).squeeze(1) * in_shard[rows]
                x.exp_()
                sums = torch.stack([x.sum(dim=-1), target_logit])
            if group is not None:
                dist.all_reduce(sums, group=group)
            nll[rows] = sums[0].log() - sums[1]
            if direction is None:
                continue
            if fused is not None:
                direction[rows] = fused.direction(flat[rows], row_max, sums[0], suppress, local[rows], in_shard[rows])
            else:  # (exp − one-hot · Σexp) / Σexp = softmax − one-hot, written in one pass
                x.scatter_add_(1, local[rows, None], -(sums[0] * in_shard[rows])[:, None])
                if suppressed is not None:
                    x[:, suppressed] = 0.0  # the suppressed logit is a constant: no gradient reaches it
                torch.div(x, sums[0][:, None], out=direction[rows])
        ctx.direction, ctx.chunk, ctx.shape = direction, chunk, logits.shape
        return nll.view(targets.shape)

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        direction = ctx.direction
        if direction is None:
            raise RuntimeError("the chunked cross-entropy's backward runs once (its buffer is scaled in place)")
        ctx.direction = None
        scale = grad_nll.reshape(-1, 1).float()
        for start in range(0, direction.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            direction[rows].mul_(scale[rows])  # computed in fp32, rounded once to the logits' dtype
        return direction.view(ctx.shape), None, None, None, None, None, None


def chunked_token_nll(logits: torch.Tensor, targets: torch.Tensor, suppressed: int | None = None,
                      chunk: int = DEFAULT_CHUNK_TOKENS, fused: FusedChunkMath | None = None) -> torch.Tensor:
    """Per-token −log softmax(logits)[target] (fp32, shaped like `targets`) from this rank's vocab-parallel
    logits [..., V / tp], with local column `suppressed` (the [MASK] id − this rank's first id; ignored
    when outside this shard) held at −1e6. Equal to megatron's `vocab_parallel_cross_entropy` on fp32 logits
    whose [MASK] column was suppressed; the logits are not modified. `fused`: the compiled per-chunk steps."""
    if chunk < 1:
        raise ValueError(f"the cross-entropy chunk must be at least 1 token, not {chunk}")
    if suppressed is not None and not 0 <= suppressed < logits.shape[-1]:
        suppressed = None
    with_grad = torch.is_grad_enabled() and logits.requires_grad
    return _ChunkedVocabParallelNLL.apply(logits, targets, suppressed, chunk, tensor_parallel_group(), fused,
                                          with_grad)


def nll_function(chunk_tokens: int, compiled: bool = False) -> NllFn:
    """The trainer's `nll_fn`: chunked_token_nll with `chunk_tokens` tokens per chunk (checked here), its
    per-chunk steps torch.compile'd when `compiled` (model.compile)."""
    if chunk_tokens < 1:
        raise ValueError(f"model.loss_chunk_tokens={chunk_tokens} must be at least 1")
    return partial(chunked_token_nll, chunk=chunk_tokens, fused=FusedChunkMath() if compiled else None)
