"""One resolver for every command: each kind of checkpoint is recognised, its shape read from it, and bad input is
one error naming the file and what is wrong (nothing written)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dsl_scale.checkpoint import layout
from dsl_scale.checkpoint.consolidated import write_consolidated
from dsl_scale.checkpoint.convert import convert
from dsl_scale.checkpoint.hf_mdlm import hf_shapes
from dsl_scale.checkpoint.readers import TensorSource
from dsl_scale.checkpoint.source import CheckpointError, open_checkpoint, resolve_model_shape
from dsl_scale.cli import inspect_checkpoint
from dsl_scale.config import Config, ModelConfig
from dsl_scale.core.files import atomic_directory

REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "mdlm_owt_small.json").read_text())
MICRO = {"vocab_size": 50258, "model_length": 32, "hidden_dim": 32, "cond_dim": 16, "n_blocks": 2, "n_heads": 2}


def reference_layout_dir(path: Path, seed: int = 0, **changes) -> dict[str, torch.Tensor]:
    """What `huggingface-cli download kuleshov-group/mdlm-owt` leaves, at micro shapes: backbone.* tensors and
    mdlm-owt's config.json fields, without our modeling files or any dsl_scale entry."""
    info = {**REFERENCE["config_json"], **MICRO, **changes}
    generator = torch.Generator().manual_seed(seed)
    tensors = {k: 0.05 * torch.randn(v, generator=generator) for k, v in hf_shapes(info).items()}
    head = info["hidden_dim"] // info["n_heads"]
    tensors["backbone.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head, 2).float() / head)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(info))
    return tensors


def test_expected_shapes_are_the_reference_checkpoints():
    expected = {k: list(v) for k, v in hf_shapes(REFERENCE["config_json"]).items()}
    assert expected == {k: v for k, v in REFERENCE["state_dict"].items() if not k.endswith("inv_freq")}


def test_reference_layout_directory_opens_with_its_shape(tmp_path):
    reference_layout_dir(tmp_path / "owt")
    opened = open_checkpoint(tmp_path / "owt")
    assert opened.kind == "hf-mdlm" and opened.step == 0
    assert opened.shape() == {"hidden": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 16, "mlp_ratio": 4,
                              "time_conditioning": False}
    weights, which = opened.weights()
    assert which == "model" and weights["vocab_embed.weight"].shape == (50258, 32)
    assert weights["blocks.1.mlp_fc1.weight"].shape == (128, 32)
    with pytest.raises(CheckpointError, match="no EMA"):
        opened.weights("ema")


def test_every_kind_of_our_checkpoints_opens(tmp_path):
    weights = {"vocab_embed.weight": torch.ones(4, 2)}
    config = dataclasses.asdict(Config(model=ModelConfig(name="micro", hidden=32, n_blocks=2, n_heads=2,
                                                         cond_dim=16)))
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        with atomic_directory(root / layout.tag_for(step)) as out:
            write_consolidated(TensorSource({"model": weights}, config, step=step), out)
    (root / layout.LATEST).write_text(layout.tag_for(4))
    for path in (tmp_path / "run", root, root / layout.tag_for(4)):
        opened = open_checkpoint(path)
        assert (opened.kind, opened.path, opened.step) == ("consolidated", root / layout.tag_for(4), 4), path
        assert opened.shape()["hidden"] == 32
    (tmp_path / "final").mkdir()
    save_file(weights, str(tmp_path / "final" / "model.safetensors"))
    for path in (tmp_path, tmp_path / "final", tmp_path / "final" / "model.safetensors"):
        opened = open_checkpoint(path)
        assert opened.kind == "safetensors" and opened.shape() is None
        assert torch.equal(opened.weights()[0]["vocab_embed.weight"], weights["vocab_embed.weight"])


def test_hub_id_is_read_from_the_local_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--kuleshov-group--mdlm-owt"
    commit = "0123456789abcdef0123456789abcdef01234567"
    reference_layout_dir(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    opened = open_checkpoint("kuleshov-group/mdlm-owt")
    assert opened.kind == "hf-mdlm" and opened.path == repo / "snapshots" / commit
    with pytest.raises(CheckpointError, match=r"Hub id kuleshov-group/mdlm-ows is not in the Hugging Face cache "
                                              r".*HF_HUB_OFFLINE.*huggingface-cli download"):
        open_checkpoint("kuleshov-group/mdlm-ows")


def test_a_model_that_disagrees_with_the_checkpoint_names_both_shapes(tmp_path):
    reference_layout_dir(tmp_path / "owt")
    cfg = Config(model=ModelConfig(name="tiny"), init_from=str(tmp_path / "owt"))
    with pytest.raises(CheckpointError, match=r"hidden=32 n_blocks=2 n_heads=2 cond_dim=16 .*asks for "
                                              r"hidden=512 n_blocks=8 n_heads=8 cond_dim=128"):
        resolve_model_shape(cfg)
    cfg = Config(model=ModelConfig(name="from_checkpoint", seq_len=64), init_from=str(tmp_path / "owt"))
    resolve_model_shape(cfg)
    assert (cfg.model.hidden, cfg.model.n_blocks, cfg.model.n_heads, cfg.model.cond_dim) == (32, 2, 2, 16)
    assert cfg.model.seq_len == 64  # the run's own length: rotary positions carry over


@pytest.mark.parametrize("damage, message", [
    ("missing", r"model\.safetensors does not match its config\.json .*missing backbone\.blocks\.1\.attn_out"),
    ("misshaped", r"model\.safetensors does not match .*backbone\.blocks\.0\.norm1\.weight has shape \[31\], "
                  r"expected \[32\]"),
])
def test_a_damaged_hf_directory_is_refused_and_nothing_written(tmp_path, damage, message):
    tensors = reference_layout_dir(tmp_path / "owt")
    if damage == "missing":
        del tensors["backbone.blocks.1.attn_out.weight"]
    else:
        tensors["backbone.blocks.0.norm1.weight"] = torch.ones(31)
    save_file(tensors, str(tmp_path / "owt" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(tmp_path / "owt")
    with pytest.raises(ValueError, match=message):
        convert(tmp_path / "owt", tmp_path / "out", "consolidated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owt"]


def test_a_lightning_file_that_is_not_mdlms_is_refused_naming_it(tmp_path):
    torch.save({"state_dict": {"encoder.weight": torch.ones(2)}, "global_step": 3}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt is a Lightning checkpoint but not of MDLM's DiT.*encoder"):
        open_checkpoint(tmp_path / "other.ckpt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=r"plain\.ckpt has no `state_dict`"):
        open_checkpoint(tmp_path / "plain.ckpt")
    assert inspect_checkpoint.main([str(tmp_path / "plain.ckpt")]) == 1


def test_not_a_checkpoint_says_what_was_expected(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"config\.json says model_type='gpt2': not a Hugging Face MDLM"):
        open_checkpoint(tmp_path / "gpt2")
    shutil.rmtree(tmp_path / "gpt2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at .*empty: expected a run directory"):
        open_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_checkpoint(tmp_path / "nothing")


def test_sampling_loads_a_reference_layout_directory(process_group, tmp_path):
    from dsl_scale.checkpoint.inference import load_for_inference

    tensors = reference_layout_dir(tmp_path / "owt")
    loaded = load_for_inference(tmp_path / "owt", precision="fp32", device=torch.device("cpu"))
    assert loaded.train_config.model.hidden == 32 and loaded.train_config.model.seq_len == 32
    assert torch.equal(loaded.model.state_dict()["vocab_embed.weight"], tensors["backbone.vocab_embed.embedding"])


def test_a_restart_takes_the_shape_its_first_start_took(tmp_path):
    from omegaconf import OmegaConf

    reference_layout_dir(tmp_path / "owt")
    first = Config(model=ModelConfig(name="from_checkpoint"), init_from=str(tmp_path / "owt"),
                   run_dir=str(tmp_path / "run"))
    assert resolve_model_shape(first).kind == "hf-mdlm" and first.model.name == "from_checkpoint:imported"
    (tmp_path / "run").mkdir()
    OmegaConf.save(OmegaConf.structured(first), tmp_path / "run" / "config.yaml")
    shutil.rmtree(tmp_path / "owt")  # a requeued job may no longer see init_from: the run is its own source
    again = Config(model=ModelConfig(name="from_checkpoint"), init_from=str(tmp_path / "owt"),
                   run_dir=str(tmp_path / "run"))
    assert resolve_model_shape(again) is None
    assert (again.model.name, again.model.hidden, again.model.n_blocks) == ("from_checkpoint:imported", 32, 2)


def test_a_scorer_hub_id_is_read_from_the_cache(tmp_path, monkeypatch):
    import transformers

    from dsl_scale.evaluation.scorers import HFScorer, build_scorer

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    snapshot = repo / "snapshots" / commit
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=32,
                                                         vocab_size=3)).save_pretrained(snapshot)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "</s>": 1, "the": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="</s>"
                                         ).save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    scorer = build_scorer("someone/tiny-gpt2")
    assert isinstance(scorer, HFScorer) and scorer.identity()["path"] == str(snapshot) and scorer.context == 32
    with pytest.raises(CheckpointError, match="Hub id someone/other is not in the Hugging Face cache"):
        build_scorer("someone/other")
