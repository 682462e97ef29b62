"""The DiT against a plain PyTorch transcription of MDLM's DiT (Q-then-K-then-V rows, nn.Linear)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsl_scale.model import DiT, DiTConfig
from dsl_scale.model.layers import timestep_features

CFG = DiTConfig(vocab_size=97, hidden=32, n_blocks=2, n_heads=4, cond_dim=16, dropout=0.0)


def reference_forward(sd: dict[str, torch.Tensor], tokens: torch.Tensor, cfg: DiTConfig,
                      sigma: torch.Tensor) -> torch.Tensor:
    """MDLM's DiT forward written out from the paper's description, on [b, s, h] activations."""
    b, s = tokens.shape
    h, nh = cfg.hidden, cfg.n_heads
    d = h // nh

    def ln(x, w):
        return F.layer_norm(x.float(), (h,)) * w

    feats = timestep_features(sigma)
    c = F.linear(F.silu(F.linear(feats, sd["sigma_map.mlp.0.weight"], sd["sigma_map.mlp.0.bias"])),
                 sd["sigma_map.mlp.2.weight"], sd["sigma_map.mlp.2.bias"])
    c = F.silu(c)
    x = sd["vocab_embed.weight"][tokens]
    inv_freq = 1.0 / (10_000 ** (torch.arange(0, d, 2).float() / d))
    angles = torch.outer(torch.arange(s).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()

    def rope(t):  # [b, s, nh, d]
        t1, t2 = t[..., : d // 2], t[..., d // 2:]
        return t * cos[None, :, None] + torch.cat([-t2, t1], -1) * sin[None, :, None]

    for i in range(cfg.n_blocks):
        p = f"blocks.{i}."
        # our rows are grouped per head as (q, k, v); MDLM's are all q, then all k, then all v
        w = sd[p + "attn_qkv.weight"].view(nh, 3, d, h).transpose(0, 1).reshape(3 * h, h)
        mods = F.linear(c, sd[p + "adaLN_modulation.weight"], sd[p + "adaLN_modulation.bias"])[:, None]
        sh1, sc1, g1, sh2, sc2, g2 = mods.chunk(6, dim=-1)
        y = ln(x, sd[p + "norm1.weight"]) * (1 + sc1) + sh1
        q, k, v = F.linear(y, w).view(b, s, 3, nh, d).unbind(2)
        q, k = rope(q), rope(k)
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
        o = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, s, h)
        x = x + g1 * F.linear(o, sd[p + "attn_out.weight"])
        y = ln(x, sd[p + "norm2.weight"]) * (1 + sc2) + sh2
        y = F.linear(y, sd[p + "mlp_fc1.weight"], sd[p + "mlp_fc1.bias"])
        y = F.linear(F.gelu(y, approximate="tanh"), sd[p + "mlp_fc2.weight"], sd[p + "mlp_fc2.bias"])
        x = x + g2 * y
    shift, scale = F.linear(c, sd["output_layer.adaLN_modulation.weight"],
                            sd["output_layer.adaLN_modulation.bias"])[:, None].chunk(2, dim=-1)
    y = ln(x, sd["output_layer.norm_final.weight"]) * (1 + scale) + shift
    return F.linear(y, sd["output_layer.linear.weight"], sd["output_layer.linear.bias"])


def randomised(model: DiT) -> DiT:
    """Zero-initialised parts (adaLN, output layer) get random values so every path is exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_dit_matches_reference_transcription(process_group, time_conditioning):
    cfg = DiTConfig(**{**CFG.__dict__, "time_conditioning": time_conditioning})
    torch.manual_seed(0)
    model = randomised(DiT(cfg)).eval()
    tokens = torch.randint(0, cfg.vocab_size, (3, 12))
    sigma = torch.tensor([0.1, 1.0, 3.0])
    ours = model(tokens, sigma)
    ref_sigma = sigma if time_conditioning else torch.zeros(3)
    sd = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    ref = reference_forward(sd, tokens, cfg, ref_sigma)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_fresh_model_predicts_uniform_and_nll_matches_cross_entropy(process_group):
    torch.manual_seed(0)
    model = DiT(CFG).eval()
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    logits = model(tokens)
    assert logits.shape == (2, 8, CFG.vocab_size)
    assert torch.all(logits == 0), "the output layer is zero-initialised (MDLM)"
    randomised(model)
    logits = model(tokens)
    ref = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view(2, 8)
    torch.testing.assert_close(DiT.token_nll(logits.clone(), tokens), ref)


def test_same_seed_same_weights_and_dropout_is_active_in_training(process_group):
    a, b, other = DiT(CFG, seed=3), DiT(CFG, seed=3), DiT(CFG, seed=4)  # the global generator plays no part
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.blocks["1"].mlp_fc1.weight, other.blocks["1"].mlp_fc1.weight)
    cfg = DiTConfig(**{**CFG.__dict__, "dropout": 0.5})
    model = randomised(DiT(cfg)).train()
    tokens = torch.randint(0, cfg.vocab_size, (2, 8))
    assert not torch.equal(model(tokens), model(tokens))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="n_heads"):
        DiTConfig(hidden=32, n_heads=3).validate()
    with pytest.raises(ValueError, match="parallel.tp=3"):
        DiTConfig(hidden=48, n_heads=4).validate(tp=3)


def test_grad_norm_counts_every_parameter_once(process_group):
    from dsl_scale.parallel.engine import grad_norm

    torch.manual_seed(0)
    model = randomised(DiT(CFG))
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    DiT.token_nll(model(tokens), tokens).mean().backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert grad_norm(model, tp_rank=0) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("max_norm", [0.05, 1e3])
def test_clip_gradients_follows_torch(process_group, max_norm):
    from dsl_scale.parallel.engine import clip_gradients, grad_norm

    torch.manual_seed(0)
    ours, reference = randomised(DiT(CFG)), randomised(DiT(CFG))
    reference.load_state_dict(ours.state_dict())
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    for model in (ours, reference):
        DiT.token_nll(model(tokens), tokens).mean().backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
    norm = grad_norm(ours, tp_rank=0)
    clip_gradients(ours, norm, max_norm)
    assert norm == pytest.approx(float(expected), rel=1e-6)
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0, msg=name)
    if max_norm > norm:
        assert grad_norm(ours, tp_rank=0) == pytest.approx(norm, rel=1e-9)  # left untouched
    else:
        assert grad_norm(ours, tp_rank=0) == pytest.approx(max_norm, rel=1e-5)


def test_activation_recomputation_changes_nothing_but_memory(process_group):
    cfg = DiTConfig(**{**CFG.__dict__, "dropout": 0.3})
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = randomised(DiT(DiTConfig(**{**cfg.__dict__, "recompute": recompute}))).train()
        tokens = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)  # dropout masks: recomputation must replay the same ones
        loss = DiT.token_nll(model(tokens), tokens).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)
