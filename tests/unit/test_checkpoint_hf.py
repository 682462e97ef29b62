"""Export to and import from the Hugging Face MDLM format (key names, shapes, config, logits, round trips)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dsl_scale.checkpoint.consolidated import write_consolidated
from dsl_scale.checkpoint.convert import convert
from dsl_scale.checkpoint.hf_mdlm import mdlm_parameter_order, qkv_from_hf, qkv_to_hf, write_hf
from dsl_scale.checkpoint.readers import TensorSource
from dsl_scale.checkpoint.source import open_checkpoint
from dsl_scale.config import Config, ModelConfig, ObjectiveConfig
from dsl_scale.core.files import atomic_directory
from dsl_scale.model.factory import build_dit

# A copy of ../shared/reference/mdlm_owt_small.json: the key names, shapes and config of the Hugging Face MDLM
# checkpoint kuleshov-group/mdlm-owt.
REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "mdlm_owt_small.json").read_text())
VOCAB = 50258
SMALL = ModelConfig(name="small", hidden=768, n_blocks=12, n_heads=12, cond_dim=128, seq_len=1024)
MICRO = ModelConfig(name="micro", hidden=32, n_blocks=2, n_heads=2, cond_dim=16, seq_len=32)


def random_model(model_cfg: ModelConfig, objective: ObjectiveConfig | None = None, seed: int = 0):
    """A DiT whose every parameter is random (the zero-initialised output and adaLN layers too), so that
    equal logits mean equal computations."""
    model = build_dit(model_cfg, VOCAB, seed, objective=objective, mask_id=VOCAB - 1).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            base = 1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm_final.weight")) else 0.0
            param.copy_(base + 0.05 * torch.randn(param.shape, generator=generator))
    return model


def run_config(model_cfg: ModelConfig, objective: str = "mdlm") -> dict:
    cfg = Config(model=model_cfg, objective=ObjectiveConfig(name=objective))
    return dataclasses.asdict(cfg)


def weights_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def test_qkv_reorder_puts_all_queries_then_keys_then_values():
    heads, head_dim, hidden = 3, 2, 6
    ours = torch.arange(3 * hidden)[:, None].float().expand(-1, hidden)  # row r holds r
    hf = qkv_to_hf(ours, heads)
    # our row for (head h, part p, d) is h·3·hd + p·hd + d; MDLM's row p·H + h·hd + d
    for h in range(heads):
        for p in range(3):
            for d in range(head_dim):
                assert hf[p * hidden + h * head_dim + d, 0] == h * 3 * head_dim + p * head_dim + d
    assert torch.equal(qkv_from_hf(hf, heads), ours)


def test_small_export_has_mdlm_keys_shapes_config_and_loads_in_transformers(process_group, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = random_model(SMALL)
    out = tmp_path / "hf"
    with atomic_directory(out) as tmp:
        write_hf(weights_of(model), run_config(SMALL), tmp)
    tensors = load_file(out / "model.safetensors")
    assert {k: list(v.shape) for k, v in tensors.items()} == REFERENCE["state_dict"]
    assert sum(v.numel() for k, v in tensors.items() if not k.endswith("inv_freq")) == REFERENCE["num_parameters"]
    assert json.loads((out / "config.json").read_text()) == REFERENCE["config_json"]
    card = (out / "README.md").read_text()
    assert "Objective: **mdlm**" in card and "12 blocks, hidden 768" in card and "trust_remote_code=True" in card

    import transformers

    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "MDLM"
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids)[0]
    assert ours.shape == theirs.shape == (2, 24, VOCAB)
    assert ours.std() > 0.1  # a model that computes something, not zero-initialised layers
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    from dsl_scale.tokenizer import get_tokenizer

    tokenizer, gpt2 = transformers.AutoTokenizer.from_pretrained(out), get_tokenizer("gpt2")
    probe = "The river flows north, past 1,024 stones.\n  Ünïcödé"
    assert tokenizer(probe)["input_ids"] == gpt2.encode(probe)
    assert (tokenizer.mask_token, tokenizer.mask_token_id, tokenizer.eos_token_id, len(tokenizer)) == (
        "[MASK]", 50257, 50256, VOCAB)


def test_hf_to_ours_to_hf_is_byte_identical(process_group, tmp_path):
    model = random_model(MICRO)
    with atomic_directory(tmp_path / "hf") as tmp:
        write_hf(weights_of(model), run_config(MICRO), tmp)
    convert(tmp_path / "hf", tmp_path / "ours", "consolidated")
    ours = open_checkpoint(tmp_path / "ours").weights()[0]
    for name, value in weights_of(model).items():  # back in our layout (per-head QKV) exactly
        assert torch.equal(ours[name], value), name
    convert(tmp_path / "ours", tmp_path / "hf2", "hf-mdlm")
    first, second = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert list(first) == list(second)
    for name in first:
        assert first[name].dtype == second[name].dtype
        assert first[name].numpy().tobytes() == second[name].numpy().tobytes(), name
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads(
        (tmp_path / "hf2" / "config.json").read_text())


def test_dsl_model_exports_its_converter_beside_the_backbone(process_group, tmp_path):
    objective = ObjectiveConfig(name="dsl", key_dim=8)
    model = random_model(MICRO, objective)
    weights = weights_of(model)
    assert any(k.startswith("converter.") for k in weights)
    with atomic_directory(tmp_path / "hf") as tmp:
        write_hf(weights, {**run_config(MICRO, "dsl"), "objective": dataclasses.asdict(objective)}, tmp)
    backbone = load_file(tmp_path / "hf" / "model.safetensors")
    assert all(k.startswith("backbone.") for k in backbone)
    info = json.loads((tmp_path / "hf" / "config.json").read_text())
    documented = info["dsl_scale"].pop("converter_tensors")
    assert info["dsl_scale"] == {"objective": "dsl", "converter_file": "dsl_converter.safetensors", "key_dim": 8,
                                 "key_seed": 0, "tokenizer": "gpt2"}
    converter = load_file(tmp_path / "hf" / "dsl_converter.safetensors")
    assert set(documented) == set(converter) == {k for k in weights if k.startswith("converter.")}
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "Objective: **dsl**" in card and "## DSL converter" in card
    assert all(f"`{name}`" in card for name in converter)
    back = open_checkpoint(tmp_path / "hf").weights()[0]  # init_from= accepts the directory itself
    assert set(back) == set(weights)
    for name, value in weights.items():
        assert torch.equal(back[name], value), name


def test_lightning_checkpoint_with_its_ema_list_imports_for_init_from(process_group, tmp_path):
    model = random_model(MICRO, seed=5)
    ema_model = random_model(MICRO, seed=6)
    for name, weights in (("hf", weights_of(model)), ("hf_ema_tmp", weights_of(ema_model))):
        with atomic_directory(tmp_path / name) as tmp:
            write_hf(weights, run_config(MICRO), tmp)
    state = load_file(tmp_path / "hf" / "model.safetensors")
    ema_state = load_file(tmp_path / "hf_ema_tmp" / "model.safetensors")
    order = mdlm_parameter_order(MICRO.n_blocks)
    assert set(order) == set(state) - {"backbone.rotary_emb.inv_freq"}
    # the reference code's layout: Lightning's dict, backbone.* (plus other modules' tensors), EMA as a list
    ckpt = {"state_dict": {**state, "noise.sigma_min": torch.tensor(1e-4)}, "global_step": 7, "epoch": 0,
            "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [ema_state[n] for n in order]}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    convert(tmp_path / "last.ckpt", tmp_path / "ours", "consolidated", seq_len=32)
    info = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert {k: info["config"]["model"][k] for k in ("hidden", "n_blocks", "n_heads", "cond_dim", "seq_len")} == {
        "hidden": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 16, "seq_len": 32}
    loaded = open_checkpoint(tmp_path / "ours").weights()[0]  # EMA weights by default, like a training checkpoint
    for name, value in weights_of(ema_model).items():
        if not name.endswith("inv_freq"):
            assert torch.equal(loaded[name], value), name
    raw = open_checkpoint(tmp_path / "ours").weights("model")[0]
    for name, value in weights_of(model).items():
        assert torch.equal(raw[name], value), name


def test_tensor_source_writes_bf16_weights_and_fp32_moments(tmp_path):
    source = TensorSource({"model": {"a": torch.ones(3)}, "exp_avg": {"a": torch.ones(3) / 3}}, {"model": {}})
    with atomic_directory(tmp_path / "c") as tmp:
        write_consolidated(source, tmp, dtype="bf16")
    assert load_file(tmp_path / "c" / "model.safetensors")["a"].dtype == torch.bfloat16
    assert load_file(tmp_path / "c" / "optimizer.exp_avg.safetensors")["a"].dtype == torch.float32
