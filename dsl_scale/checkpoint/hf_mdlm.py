"""The Hugging Face MDLM format: export our DiT, import MDLM directories and the reference code's
Lightning checkpoints.

Names: ours → MDLM's `backbone.*` (vocab_embed.weight → vocab_embed.embedding, mlp_fc1/mlp_fc2 →
mlp.0/mlp.2, the rest unchanged). Our `attn_qkv` rows are grouped per head (q, k, v of head 0, then of
head 1, …) so a tensor-parallel shard holds whole heads; MDLM's are all queries, then all keys, then
all values. DSL models export the backbone in this format and their converter (`converter.*`, our
names, incl. the DSL keys) in `dsl_converter.safetensors` beside it; config.json's `dsl_scale` entry
says so. MDLM code ignores that file; our importer reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import torch

from dsl_scale.checkpoint.consolidated import DTYPES, save_tensors
from dsl_scale.checkpoint.safe_load import load_safetensors, torch_load

CODE_DIR = Path(__file__).parent / "hf_code"
CODE_FILES = ("configuration_mdlm.py", "modeling_mdlm.py")
WEIGHTS = "model.safetensors"
CONVERTER = "dsl_converter.safetensors"
_RENAMES = [(r"^vocab_embed\.weight$", "vocab_embed.embedding"), (r"^(blocks\.\d+)\.mlp_fc1\.", r"\1.mlp.0."),
            (r"^(blocks\.\d+)\.mlp_fc2\.", r"\1.mlp.2.")]


def qkv_to_hf(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[3H, H] rows (head, {q,k,v}, d) → ({q,k,v}, head, d)."""
    hidden = weight.shape[1]
    return weight.view(n_heads, 3, -1, hidden).transpose(0, 1).reshape(3 * hidden, hidden).contiguous()


def qkv_from_hf(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    hidden = weight.shape[1]
    return weight.view(3, n_heads, -1, hidden).transpose(0, 1).reshape(3 * hidden, hidden).contiguous()


def to_hf_names(ours: dict[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in ours.items():
        if name.startswith("converter."):
            continue
        new = name
        for pattern, replacement in _RENAMES:
            new = re.sub(pattern, replacement, new)
        out["backbone." + new] = qkv_to_hf(value, n_heads) if name.endswith("attn_qkv.weight") else value
    return out


def from_hf_names(hf: dict[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in hf.items():
        if not name.startswith("backbone."):
            raise KeyError(f"unexpected tensor {name!r}: MDLM weights are named backbone.*")
        new = name[len("backbone."):]
        new = re.sub(r"^vocab_embed\.embedding$", "vocab_embed.weight", new)
        new = re.sub(r"^(blocks\.\d+)\.mlp\.0\.", r"\1.mlp_fc1.", new)
        new = re.sub(r"^(blocks\.\d+)\.mlp\.2\.", r"\1.mlp_fc2.", new)
        out[new] = qkv_from_hf(value, n_heads) if new.endswith("attn_qkv.weight") else value
    return out


def hf_config(config: dict, weights: dict[str, torch.Tensor], dtype: str) -> dict:
    model, objective = config["model"], config.get("objective", {})
    if objective.get("name") == "ar":
        raise ValueError("an autoregressive (objective=ar) model has no MDLM equivalent: causal attention")
    if int(model.get("mlp_ratio", 4)) != 4:
        raise ValueError(f"model.mlp_ratio={model['mlp_ratio']}: the MDLM format has mlp_ratio 4")
    out = {
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "model_type": "mdlm", "vocab_size": int(weights["vocab_embed.weight"].shape[0]),
        "model_length": int(model["seq_len"]), "hidden_dim": int(model["hidden"]), "cond_dim": int(model["cond_dim"]),
        "n_blocks": int(model["n_blocks"]), "n_heads": int(model["n_heads"]), "dropout": float(model["dropout"]),
        "time_conditioning": bool(model["time_conditioning"]), "return_dict": False,
        "torch_dtype": "float32" if dtype == "fp32" else "bfloat16",
    }
    if any(name.startswith("converter.") for name in weights):
        out["dsl_scale"] = {"objective": "dsl", "converter_file": CONVERTER,
                            "key_dim": int(objective.get("key_dim", weights["converter.keys"].shape[1])),
                            "key_seed": int(objective.get("key_seed", 0)), "tokenizer": config["data"]["tokenizer"]}
    return out


def write_hf(weights: dict[str, torch.Tensor], config: dict, out_dir: Path, dtype: str = "fp32") -> None:
    """An MDLM directory from our full weights and run config, into `out_dir` (exists, empty)."""
    info = hf_config(config, weights, dtype)
    save_tensors(to_hf_names(weights, info["n_heads"]), out_dir / WEIGHTS, DTYPES[dtype])
    converter = {k: v for k, v in weights.items() if k.startswith("converter.")}
    if converter:
        save_tensors(converter, out_dir / CONVERTER, None)
    (out_dir / "config.json").write_text(json.dumps(info, indent=2))
    for name in CODE_FILES:
        shutil.copyfile(CODE_DIR / name, out_dir / name)


def is_hf_dir(path: str | Path) -> bool:
    file = Path(path) / "config.json"
    try:
        return file.is_file() and json.loads(file.read_text()).get("model_type") == "mdlm"
    except json.JSONDecodeError:
        return False


def run_config(model_fields: dict, dsl: dict | None = None) -> dict:
    """Our run config (defaults) around an imported MDLM's shape."""
    from dsl_scale.config import Config, DSLObjectiveConfig, ModelConfig

    objective = DSLObjectiveConfig(key_dim=dsl["key_dim"], key_seed=dsl["key_seed"]) if dsl else None
    cfg = Config(model=ModelConfig(**{**model_fields, "name": "imported"}),
                 **({"objective": objective} if objective else {}))
    if dsl:
        cfg.data.tokenizer = dsl.get("tokenizer", cfg.data.tokenizer)
    return dataclasses.asdict(cfg)


def hf_run_config(path: str | Path) -> dict:
    """Our run config (defaults) around the shape an MDLM directory's config.json gives."""
    info = _hf_info(Path(path))
    fields = {"hidden": info["hidden_dim"], "n_blocks": info["n_blocks"], "n_heads": info["n_heads"],
              "cond_dim": info["cond_dim"], "seq_len": info["model_length"], "dropout": info.get("dropout", 0.1),
              "time_conditioning": info.get("time_conditioning", False), "mlp_ratio": 4}
    return run_config(fields, info.get("dsl_scale"))


def read_hf(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(our full weights, our run config) from an MDLM directory."""
    path = Path(path)
    info = _hf_info(path)
    weights = from_hf_names(load_safetensors(path / WEIGHTS), int(info["n_heads"]))
    dsl = info.get("dsl_scale")
    if dsl:
        weights.update(load_safetensors(path / dsl.get("converter_file", CONVERTER)))
    return weights, hf_run_config(path)


_CONFIG_FIELDS = ("vocab_size", "hidden_dim", "n_blocks", "n_heads", "cond_dim", "model_length")


def _hf_info(path: Path) -> dict:
    file = path / "config.json"
    try:
        info = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"could not read {file}: {err}") from err
    missing = [k for k in _CONFIG_FIELDS if k not in info]
    if missing:
        raise ValueError(f"{file} lacks the MDLM config field(s) {missing}")
    return info


def hf_shapes(info: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor an MDLM directory with this config.json holds, and its shape (rotary_emb.inv_freq is optional:
    it is recomputed from the head size)."""
    vocab, hidden, cond = int(info["vocab_size"]), int(info["hidden_dim"]), int(info["cond_dim"])
    shapes = {"vocab_embed.embedding": (vocab, hidden), "sigma_map.mlp.0.weight": (cond, 256),
              "sigma_map.mlp.0.bias": (cond,), "sigma_map.mlp.2.weight": (cond, cond), "sigma_map.mlp.2.bias": (cond,)}
    block = {"norm1.weight": (hidden,), "norm2.weight": (hidden,), "attn_qkv.weight": (3 * hidden, hidden),
             "attn_out.weight": (hidden, hidden), "mlp.0.weight": (4 * hidden, hidden), "mlp.0.bias": (4 * hidden,),
             "mlp.2.weight": (hidden, 4 * hidden), "mlp.2.bias": (hidden,),
             "adaLN_modulation.weight": (6 * hidden, cond), "adaLN_modulation.bias": (6 * hidden,)}
    for i in range(int(info["n_blocks"])):
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    shapes.update({"output_layer.norm_final.weight": (hidden,), "output_layer.linear.weight": (vocab, hidden),
                   "output_layer.linear.bias": (vocab,), "output_layer.adaLN_modulation.weight": (2 * hidden, cond),
                   "output_layer.adaLN_modulation.bias": (2 * hidden,)})
    return {"backbone." + k: v for k, v in shapes.items()}


def check_hf_dir(path: str | Path) -> None:
    """An MDLM directory holds every tensor its config.json implies, each of that shape, and nothing else
    (headers only are read). Raises ValueError naming the file and the first problems."""
    from dsl_scale.checkpoint.safe_load import safetensors_metadata

    path = Path(path)
    info = _hf_info(path)
    file = path / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"{path} has a config.json but no {WEIGHTS}")
    found = {k: tuple(shape) for k, (_, shape) in safetensors_metadata(file).items()}
    expected = hf_shapes(info)
    rotary = "backbone.rotary_emb.inv_freq"
    hidden, heads = int(info["hidden_dim"]), int(info["n_heads"])
    if hidden % heads:
        raise ValueError(f"{path / 'config.json'}: hidden_dim={hidden} is not divisible by n_heads={heads}")
    expected_rotary = (hidden // heads // 2,)
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"{k} has shape {list(found[k])}, expected {list(v)}" for k, v in expected.items()
                 if k in found and found[k] != v]
    if rotary in found and found[rotary] != expected_rotary:
        problems.append(f"{rotary} has shape {list(found[rotary])}, expected {list(expected_rotary)}")
    problems += [f"unexpected {k}" for k in found if k not in expected and k != rotary]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ValueError(f"{file} does not match its config.json (hidden_dim={hidden}, n_blocks={info['n_blocks']}, "
                         f"n_heads={heads}, cond_dim={info['cond_dim']}, vocab_size={info['vocab_size']}): "
                         + "; ".join(problems[:4]) + more)
    dsl = info.get("dsl_scale")
    if dsl and not (path / dsl.get("converter_file", CONVERTER)).is_file():
        raise FileNotFoundError(f"{path / 'config.json'} names a DSL converter file "
                                f"{dsl.get('converter_file', CONVERTER)}, which is missing")


def mdlm_parameter_order(n_blocks: int) -> list[str]:
    """MDLM's `backbone.parameters()` order (its EMA list follows it)."""
    block = ["norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.0.weight", "mlp.0.bias",
             "mlp.2.weight", "mlp.2.bias", "adaLN_modulation.weight", "adaLN_modulation.bias"]
    names = ["vocab_embed.embedding", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
             "sigma_map.mlp.2.bias"]
    names += [f"blocks.{i}.{p}" for i in range(n_blocks) for p in block]
    names += ["output_layer.norm_final.weight", "output_layer.linear.weight", "output_layer.linear.bias",
              "output_layer.adaLN_modulation.weight", "output_layer.adaLN_modulation.bias"]
    return ["backbone." + n for n in names]


Tensors = dict[str, torch.Tensor]


def read_lightning(file: str | Path, seq_len: int = 1024, dropout: float = 0.1,
                   time_conditioning: bool = False) -> tuple[Tensors, Tensors | None, dict]:
    """(weights, EMA weights or None, run config) from the MDLM reference code's Lightning checkpoint:
    `state_dict` with backbone.* tensors and `ema.shadow_params`, a list in parameter order. The model's
    shape is read off the tensors (heads from the rotary frequencies); the sequence length is not stored."""
    checkpoint = torch_load(file, mmap=False)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not state or not isinstance(state, dict):
        raise ValueError(f"{file} has no `state_dict`: not a Lightning checkpoint of the MDLM code")
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    needed = ("backbone.vocab_embed.embedding", "backbone.rotary_emb.inv_freq", "backbone.sigma_map.mlp.0.weight")
    lacking = [k for k in needed if k not in backbone]
    if lacking:
        found = ", ".join(list(state)[:5]) or "nothing"
        raise ValueError(f"{file} is a Lightning checkpoint but not of MDLM's DiT: its state_dict lacks {lacking} "
                         f"(it holds {found}{', …' if len(state) > 5 else ''})")
    hidden = backbone["backbone.vocab_embed.embedding"].shape[1]
    n_heads = hidden // (2 * backbone["backbone.rotary_emb.inv_freq"].numel())
    n_blocks = len({k.split(".")[2] for k in backbone if k.startswith("backbone.blocks.")})
    fields = {"hidden": hidden, "n_blocks": n_blocks, "n_heads": n_heads, "mlp_ratio": 4, "seq_len": seq_len,
              "cond_dim": backbone["backbone.sigma_map.mlp.0.weight"].shape[0], "dropout": dropout,
              "time_conditioning": time_conditioning}
    expected = hf_shapes({"vocab_size": backbone["backbone.vocab_embed.embedding"].shape[0], "hidden_dim": hidden,
                          "n_blocks": n_blocks, "cond_dim": fields["cond_dim"]})
    problems = [f"missing {k}" for k in expected if k not in backbone]
    problems += [f"{k} has shape {list(backbone[k].shape)}, expected {list(v)}" for k, v in expected.items()
                 if k in backbone and tuple(backbone[k].shape) != v]
    if problems:
        raise ValueError(f"{file}: the MDLM backbone is incomplete or misshaped: {'; '.join(problems[:4])}")
    ema = None
    shadow = (checkpoint.get("ema") or {}).get("shadow_params")
    if shadow is not None:
        order = mdlm_parameter_order(n_blocks)
        if len(shadow) != len(order):
            raise ValueError(f"{file}: the EMA list has {len(shadow)} tensors, the model {len(order)} parameters")
        for name, value in zip(order, shadow):
            if tuple(value.shape) != tuple(backbone[name].shape):
                raise ValueError(f"{file}: EMA tensor for {name} has shape {tuple(value.shape)}, "
                                 f"the parameter {tuple(backbone[name].shape)}")
        ema = from_hf_names(dict(zip(order, shadow)), n_heads)  # parameters only, like our EMA
    return from_hf_names(backbone, n_heads), ema, run_config(fields)
