"""DSL's converter (docs/method.md §4) at TP = 1: Bayes posterior, endpoints, initialisation, input mixing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsl_scale.diffusion import dsl
from dsl_scale.model import DiT, DiTConfig
from dsl_scale.model.converter import Converter, mix_inputs


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_log_likelihood(z: torch.Tensor, mean: torch.Tensor, s: float) -> torch.Tensor:
    """log N(z; mean, s·I) in float64, for each mean row: [n, V]."""
    d = z.shape[-1]
    sq = ((z.double()[:, None, :] - mean.double()[None]) ** 2).sum(-1)
    return -sq / (2 * s) - 0.5 * d * math.log(2 * math.pi * s)


@pytest.mark.parametrize("s", [0.05, 1.0, 7.0, 40.0, 100.0])
def test_softmax_with_beta_one_and_log_prior_bias_is_the_exact_bayes_posterior(s):
    vocab, dim = 11, 6
    conv = Converter(vocab, hidden=4, key_dim=dim, key_seed=2)
    log_prior = torch.log_softmax(torch.randn(vocab, generator=gen(0), dtype=torch.float64) * 2, -1)
    with torch.no_grad():
        conv.token_bias.copy_(log_prior)
        conv.mask_bias.fill_(-math.inf)  # the mask slot is no token: prior 0
    tokens = torch.multinomial(log_prior.exp(), 200, replacement=True, generator=gen(1))
    noise = torch.randn(200, dim, generator=gen(2))
    z = dsl.localize(conv.keys, tokens, torch.full((200,), s, dtype=torch.float64), noise)
    p_tokens, p_mask = conv.slot_probs(z)
    # Bayes with the Gaussian likelihoods written out: s enters them, and cancels in the posterior.
    posterior = torch.softmax(log_prior + gaussian_log_likelihood(z, s * conv.keys, s), dim=-1)
    torch.testing.assert_close(p_tokens.double(), posterior, rtol=1e-5, atol=1e-6)
    assert torch.all(p_mask == 0)


def test_zero_snr_gives_zero_z_and_the_mask_slot_dominates():
    vocab = 1000
    conv = Converter(vocab, hidden=8)
    tokens = torch.randint(0, vocab, (4, 16), generator=gen(0))
    z = dsl.localize(conv.keys, tokens, torch.zeros(4, 16, dtype=torch.float64), torch.randn(4, 16, 48))
    assert torch.equal(z, torch.zeros_like(z))
    p_tokens, p_mask = conv.slot_probs(z)
    # b = 0 on V token slots and log V on the mask slot: the mask slot holds half the mass
    torch.testing.assert_close(p_mask, torch.full_like(p_mask, 0.5))
    assert torch.all(p_mask > 100 * p_tokens.max(-1, keepdim=True).values)


def test_s_max_concentrates_on_the_true_token_at_the_real_vocabulary():
    vocab = 50258
    conv = Converter(vocab, hidden=4)
    tokens = torch.randint(0, vocab - 1, (256,), generator=gen(0))
    z = dsl.localize(conv.keys, tokens, torch.full((256,), 100.0, dtype=torch.float64),
                     torch.randn(256, 48, generator=gen(1)))
    with torch.no_grad():
        p_tokens, _ = conv.slot_probs(z)
    p_true = p_tokens.gather(-1, tokens[:, None])
    assert p_true.min() >= 0.99, p_true.min()


def test_initialisation_and_checkpointed_keys():
    vocab, hidden, mask_id = 13, 5, 12
    conv = Converter(vocab, hidden, key_dim=7, key_seed=3, beta_init=0.5)
    embedding = torch.randn(vocab, hidden, generator=gen(0))
    conv.init_from_embedding(embedding, embedding[mask_id])
    assert torch.equal(conv.token_weight, embedding) and torch.equal(conv.mask_weight, embedding[mask_id])
    assert conv.beta.item() == 0.5 and conv.mask_bias.item() == pytest.approx(math.log(vocab))
    assert torch.all(conv.token_bias == 0) and torch.all(conv.out_bias == 0)
    state = conv.state_dict()
    assert torch.equal(state["keys"], dsl.token_keys(vocab, 7, 3)), "K is saved with the checkpoint"
    assert "keys" not in dict(conv.named_parameters()), "K is frozen"
    other = Converter(vocab, hidden, key_dim=7, key_seed=99)
    other.load_state_dict(state)
    assert torch.equal(other.keys, conv.keys)
    conv.bfloat16()
    assert conv.keys.dtype == torch.float32 and conv.token_weight.dtype == torch.bfloat16
    assert conv(torch.randn(2, 3, 7)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="embedding shard"):
        conv.init_from_embedding(torch.zeros(vocab + 1, hidden), torch.zeros(hidden))


def test_output_is_the_probability_weighted_rows_plus_bias_and_gradients_reach_every_parameter():
    vocab, hidden = 9, 6
    conv = Converter(vocab, hidden, key_dim=5, key_seed=1)
    embedding = torch.randn(vocab, hidden, generator=gen(0))
    conv.init_from_embedding(embedding, embedding[vocab - 1])
    with torch.no_grad():
        conv.token_bias.copy_(torch.randn(vocab, generator=gen(1)))
        conv.out_bias.copy_(torch.randn(hidden, generator=gen(2)))
        conv.beta.fill_(1.3)
    z = torch.randn(3, 4, 5, generator=gen(3)) * 4
    h = conv(z)
    # the textbook form: softmax over [K; 0] with logits β·z·Kextᵀ + b, then W·p + c
    k_ext = torch.cat([conv.keys, torch.zeros(1, 5)])
    b_ext = torch.cat([conv.token_bias, conv.mask_bias])
    w_ext = torch.cat([conv.token_weight, conv.mask_weight[None]])
    p = torch.softmax(conv.beta * z @ k_ext.T + b_ext, -1)
    torch.testing.assert_close(h, p @ w_ext + conv.out_bias)
    h.square().sum().backward()
    for name, param in conv.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_mixed_inputs_take_the_table_at_discrete_positions(process_group):
    cfg = DiTConfig(vocab_size=50, hidden=16, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0)
    torch.manual_seed(0)
    model = DiT(cfg)
    conv = Converter(cfg.vocab_size, cfg.hidden, key_dim=8)
    conv.init_from_embedding(model.vocab_embed.weight.detach(), model.vocab_embed.weight[49].detach())
    tokens = torch.randint(0, 49, (2, 12), generator=gen(0))
    batch = dsl.corrupt(tokens, conv.keys, dsl.SNRSchedule(mdlm_fraction=0.5), 49, torch.tensor([1, 2]))
    embeds = mix_inputs(conv, model.vocab_embed, batch.ids, batch.z, batch.discrete)
    table = model.vocab_embed.weight[batch.ids]
    expected = torch.where(batch.discrete[..., None], table, conv(batch.z))
    torch.testing.assert_close(embeds, expected)
    logits = model(None, input_embeds=embeds)
    assert logits.shape == (2, 12, cfg.vocab_size)


def test_dsl_loss_falls_on_real_text(process_group, wiki_docs):
    """A micro DiT + converter trained for a few steps on the wikipedia sample with the DSL objective.
    The GPT-2 ids of the batch are renumbered to a compact vocabulary (+ [MASK]) to keep this fast."""
    from dsl_scale.tokenizer import get_tokenizer

    raw = torch.tensor(get_tokenizer("gpt2").encode(" ".join(wiki_docs[:20]))[: 8 * 32]).view(8, 32)
    used, ids = torch.unique(raw, return_inverse=True)
    vocab, mask_id = len(used) + 1, len(used)
    cfg = DiTConfig(vocab_size=vocab, hidden=32, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0)
    torch.manual_seed(0)
    model = DiT(cfg)
    conv = Converter(vocab, cfg.hidden)
    conv.init_from_embedding(model.vocab_embed.weight.detach(), model.vocab_embed.weight[mask_id].detach())
    params = list(model.parameters()) + list(conv.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    schedule = dsl.SNRSchedule(mdlm_fraction=0.2)
    losses = []
    for step in range(30):
        batch = dsl.corrupt(ids, conv.keys, schedule, mask_id, (step, torch.arange(8)))
        logits = model(None, input_embeds=mix_inputs(conv, model.vocab_embed, batch.ids, batch.z, batch.discrete))
        logits[..., mask_id] = -1e6
        loss = dsl.dsl_loss(F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view(8, 32))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
