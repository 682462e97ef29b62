"""The MDLM diffusion transformer (DiT with adaLN, rotary attention) for Hugging Face `transformers`,
in plain PyTorch: runs on CPU, no flash-attn. Written for dsl_scale's `hf-mdlm` export.

Parameter names and layouts follow the MDLM checkpoints: `attn_qkv` rows are all query heads, then all
key heads, then all value heads; rotary embeddings (rotate-half, base 10000) act on queries and keys;
LayerNorms have a weight only and run in fp32. `forward(input_ids, timesteps)` returns the backbone's
logits over the vocabulary (the [MASK] logit included; MDLM's parameterisation is applied by the caller).
Standalone: this file is copied next to the weights and loaded with `trust_remote_code=True`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_mdlm import MDLMConfig


class LayerNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return (F.layer_norm(x.float(), (x.shape[-1],), eps=1e-5) * self.weight.float()).to(x.dtype)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def forward(self, seq_len: int):
        positions = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_dim: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, cond_dim, bias=True), nn.SiLU(),
                                 nn.Linear(cond_dim, cond_dim, bias=True))

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, ids):
        return self.embedding[ids]


class DDiTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim, bias=True), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim, bias=True))
        self.dropout = dropout
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)

    def _residual(self, branch, gate, skip):
        return skip + gate * F.dropout(branch, p=self.dropout, training=self.training)

    def forward(self, x, cos, sin, c):
        batch, seq, dim = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, -1)
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa))
        q, k, v = qkv.view(batch, seq, 3, self.n_heads, dim // self.n_heads).unbind(dim=2)  # [b, s, h, d]
        cos, sin = cos[None, :, None, :].to(q.dtype), sin[None, :, None, :].to(q.dtype)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(batch, seq, dim)
        x = self._residual(self.attn_out(out), gate_msa, x)
        return self._residual(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)), gate_mlp, x)


class DDitFinalLayer(nn.Module):
    def __init__(self, hidden: int, vocab_size: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden)
        self.linear = nn.Linear(hidden, vocab_size)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden, bias=True)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DITBackbone(nn.Module):
    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.config = config
        self.vocab_embed = EmbeddingLayer(config.hidden_dim, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden_dim // config.n_heads)
        self.blocks = nn.ModuleList([DDiTBlock(config.hidden_dim, config.n_heads, config.cond_dim,
                                               dropout=config.dropout) for _ in range(config.n_blocks)])
        self.output_layer = DDitFinalLayer(config.hidden_dim, config.vocab_size, config.cond_dim)

    def forward(self, input_ids, timesteps=None, output_hidden_states=False):
        x = self.vocab_embed(input_ids)
        if timesteps is None or not self.config.time_conditioning:
            timesteps = torch.zeros(x.shape[0], device=x.device)
        c = F.silu(self.sigma_map(timesteps))
        cos, sin = self.rotary_emb(x.shape[1])
        hidden = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x, cos, sin, c)
            if output_hidden_states:
                hidden.append(x)
        return self.output_layer(x, c), hidden


class MDLM(PreTrainedModel):
    config_class = MDLMConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["DDiTBlock"]

    def __init__(self, config: MDLMConfig):
        super().__init__(config)
        self.backbone = DITBackbone(config)
        self.post_init()

    def _init_weights(self, module):  # weights come from the checkpoint; keep construction-time values
        pass

    def forward(self, input_ids=None, timesteps=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        logits, hidden = self.backbone(input_ids, timesteps, bool(output_hidden_states))
        if return_dict:
            return MaskedLMOutput(logits=logits, hidden_states=tuple(hidden) if hidden else None)
        return (logits, tuple(hidden)) if hidden else (logits,)
