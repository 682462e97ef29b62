"""Seeded dropout: each sequence's masks are a pure function of its seed and the dropout site (model/blocks.py:
counter-based uniforms, core/counter_rng.py)."""

from __future__ import annotations

import torch

from dsl_scale.model import DiT, DiTConfig
from dsl_scale.model.blocks import seeded_dropout, seeded_keep_scale, site_draw

CFG = DiTConfig(vocab_size=97, hidden=32, n_blocks=2, n_heads=4, cond_dim=16, dropout=0.3)


def randomised(model: DiT) -> DiT:
    """Non-zero gates and output layer (they start at zero, which would hide any dropout)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    return model


def test_mask_matches_f_dropout_statistics_and_is_a_function_of_the_seed():
    x = torch.ones(64, 3, 48)
    a = seeded_dropout(x, 0.25, [1, 2, 3])
    assert torch.equal(a, seeded_dropout(x, 0.25, [1, 2, 3]))
    assert set(a.unique().tolist()) == {0.0, torch.tensor(1 / 0.75).item()}
    assert abs(float((a == 0).float().mean()) - 0.25) < 0.03
    assert torch.equal(seeded_dropout(x[:, :1], 0.25, [3]), a[:, 2:])  # a row's mask ignores its batch
    assert not torch.equal(a[:, 0], a[:, 1])
    # sequence-parallel shards cut the full-sequence mask
    shards = [seeded_dropout(x[:16], 0.25, [1, 2, 3], (rank, 4)) for rank in range(4)]
    assert torch.equal(torch.cat(shards), a)
    # every (block, site) draws its own mask from the sequence's seed
    masks = [seeded_keep_scale(x[:8, :1], 0.5, [7], draw=site_draw(block, site)) for block in range(6)
             for site in (0, 1)]
    assert len({tuple(m.flatten().tolist()) for m in masks}) == len(masks)
    assert torch.equal(seeded_dropout(x, 0.25, torch.tensor([1, 2, 3])), a)  # a tensor of seeds or a list


def test_dit_rows_do_not_depend_on_their_batch_and_recomputation_replays_the_masks(process_group):
    tokens = torch.randint(0, CFG.vocab_size, (3, 8), generator=torch.Generator().manual_seed(1))
    seeds = torch.tensor([11, 22, 33])
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = randomised(DiT(DiTConfig(**{**CFG.__dict__, "recompute": recompute}))).train()
        logits = model(tokens, dropout_seeds=seeds)
        torch.manual_seed(123)  # the global generator plays no part
        DiT.token_nll(logits.clone(), tokens).mean().backward()  # (megatron's loss edits its input)
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
        alone = model(tokens[[2, 0]], dropout_seeds=seeds[[2, 0]])
        torch.testing.assert_close(alone, logits[[2, 0]], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(tokens, dropout_seeds=seeds + 1), logits)  # dropout is on
        assert torch.equal(model.eval()(tokens, dropout_seeds=seeds), model(tokens))  # and off in eval
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
