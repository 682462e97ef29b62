"""`model.compile` (parallel/compile.py): what `auto` means, bad values refused, and a compiled tiny DiT
training step equal to the eager one (seeded dropout on: the counter-RNG masks are compiled too)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from dsl_scale.config import Config, register_configs, to_config, validate
from dsl_scale.launch import CONFIG_DIR
from dsl_scale.model import DiT, DiTConfig
from dsl_scale.parallel.compile import apply_compile, compile_enabled
from dsl_scale.parallel.cross_entropy import chunked_token_nll

CFG = DiTConfig(vocab_size=40, hidden=32, n_blocks=2, n_heads=4, cond_dim=16, dropout=0.1, mask_id=39,
                time_conditioning=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto compiles where CUDA is")
def test_auto_is_off_on_the_cpu_and_leaves_the_blocks_eager(process_group):
    assert not compile_enabled("auto")
    model = DiT(CFG)
    assert not apply_compile(model, "auto")
    assert not apply_compile(model, False)
    assert all("attention_branch" not in vars(block) for block in model.blocks.values())


def composed(*overrides: str) -> Config:
    register_configs()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return to_config(compose("config", overrides=list(overrides)))


def test_settings_as_hydra_gives_them_and_bad_values_are_refused():
    assert composed().model.compile == "auto"
    on, off = composed("model.compile=true").model.compile, composed("model.compile=false").model.compile
    assert compile_enabled(on) and not compile_enabled(off)  # Hydra hands these over as booleans
    assert not compile_enabled("auto", zero_stage=3)
    with pytest.raises(ValueError, match="model.compile='fast'"):
        compile_enabled("fast")
    with pytest.raises(ValueError, match="model.compile='fast'"):
        validate(composed("model.compile=fast"))
    with pytest.raises(ValueError, match="model.loss_chunk_tokens=0"):
        validate(composed("model.loss_chunk_tokens=0"))


def train_step(model: DiT, tokens: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(tokens, sigma, dropout_seeds=torch.tensor([5, 6]))
    loss = chunked_token_nll(logits, tokens, CFG.mask_id, 7).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.slow  # ~40 s of inductor compilation on a busy CPU
def test_compiled_blocks_train_like_eager_ones(process_group):
    torch.manual_seed(0)
    eager = DiT(CFG)
    with torch.no_grad():  # random everywhere (the adaLN and output layers start at zero)
        for p in eager.parameters():
            p.normal_(0, 0.2)
    compiled = DiT(CFG)
    compiled.load_state_dict(eager.state_dict())
    assert apply_compile(compiled, "true")
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their names
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # the second step reuses the graphs with new inputs
        tokens, sigma = torch.randint(0, 39, (2, 12), generator=g), torch.rand(2, generator=g)
        want_loss, want_grads = train_step(eager, tokens, sigma)
        got_loss, got_grads = train_step(compiled, tokens, sigma)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        for name, grad in want_grads.items():
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    compiled.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(tokens, sigma), eager(tokens, sigma), rtol=1e-5, atol=1e-6)
