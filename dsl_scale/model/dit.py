"""The MDLM Diffusion Transformer (docs/method.md §2), built from megatron-core tensor-parallel layer types.

The network is the same at every tensor-parallel size: megatron's layers hold their shard of each
weight; nothing here talks to process groups directly. For pipeline parallelism a DiT is built per
stage with a contiguous range of blocks (global names, `blocks.<i>`, so checkpoints keep one naming):
the first stage owns the embedding and noise map, the last the output layer. Between stages the
activations travel as one tensor [s + 1, b, H]: the hidden states plus, as row s, the conditioning
vector (zero-padded to H), which every stage's adaLN needs and whose gradient must flow back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import (
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
    vocab_parallel_cross_entropy,
)
from megatron.core.tensor_parallel.utils import VocabUtility
from torch import nn

from dsl_scale.config import ArchitectureConfig, check_parallel_layout
from dsl_scale.diffusion import mdlm
from dsl_scale.model import init as model_init
from dsl_scale.model.blocks import DiTBlock, FinalLayer, dropout_lanes
from dsl_scale.model.converter import Converter, mix_inputs
from dsl_scale.model.layers import NoiseEmbedder, Rotary


@dataclass
class DiTConfig(ArchitectureConfig):
    """The network's shape (ArchitectureConfig: declared once, in dsl_scale/config.py) plus what the run
    adds: the vocabulary, causal attention (AR) and DSL's converter."""

    vocab_size: int = 50258
    causal: bool = False
    # DSL's converter (model/converter.py) from localization observations z; 0 = no converter.
    converter_key_dim: int = 0
    converter_key_seed: int = 0
    converter_beta_init: float = 1.0
    mask_id: int = 50257

    def validate(self, tp: int = 1, pp: int = 1) -> None:
        if self.hidden % self.n_heads:
            raise ValueError(f"model.hidden={self.hidden} is not divisible by model.n_heads={self.n_heads}")
        if (self.hidden // self.n_heads) % 2:
            raise ValueError(f"head dim {self.hidden // self.n_heads} must be even for rotary embeddings")
        check_parallel_layout(self, self.vocab_size, tp, pp)


def default_embedding_init(weight: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig, mp_config: ModelParallelConfig | None = None, stage: int = 0,
                 seed: int = 0, whole: model_init.Whole = model_init.as_is):
        """Pipeline stage `stage` of the network (all of it at PP = 1), this rank's tensor-parallel shards only,
        initialised from `seed` identically at every layout (model/init.py: no other stage is built, no
        rank draws the whole of a sharded weight). `whole`: how to make parameters whole while they are
        initialised, when something (ZeRO-3's zero.Init) partitions them as they are created."""
        super().__init__()
        mp_config = mp_config or ModelParallelConfig(use_cpu_initialization=True)
        tp, pp = mp_config.tensor_model_parallel_size, mp_config.pipeline_model_parallel_size
        cfg.validate(tp, pp)
        self.cfg = cfg
        self.config = mp_config  # megatron's pipeline schedules look for `.config`
        # megatron's own initialisation builds each sharded weight whole on every TP rank: model/init.py draws
        layers_config = dataclasses.replace(mp_config, perform_initialization=False)
        self.pre_process = stage == 0
        self.post_process = stage == pp - 1
        per_stage = cfg.n_blocks // pp
        self.block_ids = range(stage * per_stage, (stage + 1) * per_stage)
        self.input_tensor: torch.Tensor | None = None
        if self.pre_process:
            self.vocab_embed = VocabParallelEmbedding(
                cfg.vocab_size, cfg.hidden, init_method=default_embedding_init, config=layers_config
            )
            self.sigma_map = NoiseEmbedder(cfg.cond_dim)
            if cfg.converter_key_dim:
                if not 0 <= cfg.mask_id < cfg.vocab_size:
                    raise ValueError(f"mask_id={cfg.mask_id} is outside the vocabulary [0, {cfg.vocab_size}): "
                                     "the DSL converter starts from the embedding's [MASK] row")
                self.converter = Converter(cfg.vocab_size, cfg.hidden, cfg.converter_key_dim,
                                           cfg.converter_key_seed, cfg.converter_beta_init)
        self.rotary_emb = Rotary(cfg.hidden // cfg.n_heads)
        self.blocks = nn.ModuleDict(
            {str(i): DiTBlock(cfg.hidden, cfg.n_heads, cfg.cond_dim, cfg.mlp_ratio, cfg.dropout, cfg.causal,
                              layers_config, index=i)
             for i in self.block_ids}
        )
        if self.post_process:
            self.output_layer = FinalLayer(cfg.hidden, cfg.vocab_size, cfg.cond_dim, layers_config)
        self.initialize(seed, whole)

    @torch.no_grad()
    def initialize(self, seed: int, whole: model_init.Whole = model_init.as_is) -> None:
        """Every parameter from `seed` (model/init.py). The DSL converter starts from the embedding: this
        rank's rows and the whole table's [MASK] row, drawn here rather than gathered (no collective: the
        model may not be on its device yet, nor every TP rank building it now)."""
        model_init.initialize(self, seed, self.config.tensor_model_parallel_size, whole)
        if hasattr(self, "converter"):
            with whole([self.vocab_embed.weight, self.converter.token_weight, self.converter.mask_weight]):
                # drawn inside `whole`: a partitioning build context's factories are suspended there
                mask_row = model_init.embedding_rows(seed, self.cfg.vocab_size, self.cfg.hidden, self.cfg.mask_id)
                self.init_converter(mask_row[0])

    @property
    def vocab_range(self) -> tuple[int, int]:
        """[start, end) of the vocabulary ids whose logits (and embedding rows) this rank holds."""
        tp = self.config.tensor_model_parallel_size
        rank = parallel_state.get_tensor_model_parallel_rank() if tp > 1 else 0
        return tuple(VocabUtility.vocab_range_from_global_vocab_size(self.cfg.vocab_size, rank, tp))

    def init_converter(self, mask_row: torch.Tensor) -> None:
        """The converter's W from this rank's token-embedding shard and the whole table's [MASK] row."""
        self.converter.init_from_embedding(self.vocab_embed.weight.detach(), mask_row)

    def set_input_tensor(self, tensor) -> None:
        """Activations received from the previous pipeline stage (megatron's schedule calls this)."""
        self.input_tensor = tensor[0] if isinstance(tensor, (list, tuple)) else tensor

    def embed(self, tokens: torch.Tensor | None, sigma: torch.Tensor | None, input_embeds: torch.Tensor | None,
              z: torch.Tensor | None, discrete: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if input_embeds is None and z is not None:
            input_embeds = mix_inputs(self.converter, self.vocab_embed, tokens, z, discrete)
        elif input_embeds is None:
            input_embeds = self.vocab_embed(tokens)
        batch = input_embeds.shape[0]
        if sigma is None or not self.cfg.time_conditioning:
            sigma = torch.zeros(batch, device=input_embeds.device)
        cond = F.silu(self.sigma_map(sigma)).to(self.vocab_embed.weight.dtype)
        return input_embeds.transpose(0, 1), cond  # [s, b, H], [b, C]

    def forward(self, tokens: torch.Tensor | None = None, sigma: torch.Tensor | None = None,
                input_embeds: torch.Tensor | None = None, z: torch.Tensor | None = None,
                discrete: torch.Tensor | None = None, dropout_seeds: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [b, s] ids → vocab-parallel logits [b, s, V / tp] on the last stage, else the stage
        tensor [s + 1, b, H]. Instead of the embedding of `tokens`: `input_embeds` [b, s, H], or DSL's
        localization observations `z` [b, s, d] through the converter, except where `discrete` [b, s]
        is set (those positions embed `tokens`: exact [MASK] or clean tokens, as the discrete samplers
        feed them). σ is ignored unless time-conditioned. Later stages read `set_input_tensor`'s.
        `dropout_seeds` (int [b], training only): one seed per sequence, from which each dropout site
        (block i, attention or MLP) draws that sequence's mask, so that the masks depend on neither the
        batch a sequence travels in nor the layout; without them, plain F.dropout."""
        sequence_parallel = self.config.sequence_parallel
        if self.pre_process:
            x, cond = self.embed(tokens, sigma, input_embeds, z, discrete)
            if sequence_parallel:
                x = scatter_to_sequence_parallel_region(x)
        else:
            x, cond = self.input_tensor[:-1], self.input_tensor[-1, :, : self.cfg.cond_dim]
        cos, sin = self.rotary_emb.cos_sin(x.shape[0] * (self.config.tensor_model_parallel_size
                                                          if sequence_parallel else 1))
        final_cond = cond
        if sequence_parallel:  # blocks see a sequence shard: sum their partial gradients of cond
            cond = copy_to_tensor_model_parallel_region(cond)
        lanes = None
        if dropout_seeds is not None and self.training and self.cfg.dropout > 0:
            lanes = dropout_lanes(dropout_seeds, x.device)  # the masks are drawn on the device, from these keys
        for block in self.blocks.values():
            if self.cfg.recompute and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cond, cos, sin, lanes, use_reentrant=False)
            else:
                x = block(x, cond, cos, sin, lanes)
        if self.post_process:
            if sequence_parallel:  # the output layer's TP backward already sums the gradient: just split it
                x = gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)
            return self.output_layer(x.transpose(0, 1), final_cond)
        cond_row = F.pad(cond, (0, self.cfg.hidden - self.cfg.cond_dim))[None]
        return torch.cat([x, cond_row], dim=0)

    @staticmethod
    def token_nll(logits: torch.Tensor, targets: torch.Tensor, suppressed: int | None = None) -> torch.Tensor:
        """Per-token −log softmax(logits)[target] without gathering vocab-parallel logits. [b, s]. Local column
        `suppressed` (if in this shard) is held at SUBS's −∞ first. The whole-batch fp32 reference: training
        uses parallel/cross_entropy.py's chunked equivalent."""
        logits = logits.float()
        if suppressed is not None and 0 <= suppressed < logits.shape[-1]:
            column = torch.tensor([suppressed], device=logits.device)
            logits = logits.index_fill(-1, column, mdlm.NEG_INF)
        return vocab_parallel_cross_entropy(logits, targets)

    def num_parameters(self) -> int:
        """This rank's (TP shards, not ZeRO-3 partitions: DeepSpeed's `ds_numel` while it partitions)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters())
