"""The Hugging Face MDLM format: export our DiT, import MDLM directories and the reference code's
Lightning checkpoints.

Names: ours → MDLM's `backbone.*` (vocab_embed.weight → vocab_embed.embedding, mlp_fc1/mlp_fc2 →
mlp.0/mlp.2, the rest unchanged). Our `attn_qkv` rows are grouped per head (q, k, v of head 0, then of
head 1, …) so a tensor-parallel shard holds whole heads; MDLM's are all queries, then all keys, then
all values. DSL models export the backbone in this format and their converter (`converter.*`, our
names, incl. the DSL keys) in `dsl_converter.safetensors` beside it; config.json's `dsl_scale` entry
says so and names each converter tensor (CONVERTER_TENSORS), and the model card (README.md) gives the
converter's formula. MDLM code ignores that file; our importer reads it back. GPT-2 runs also get the
tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json: [MASK] = 50257).
"""

from __future__ import annotations

import dataclasses
import functools
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
                            "key_seed": int(objective.get("key_seed", 0)), "tokenizer": config["data"]["tokenizer"],
                            "converter_tensors": {k: v for k, v in CONVERTER_TENSORS.items() if k in weights}}
    return out


# DSL's converter (model/converter.py) as the export documents it: p = softmax(beta · z·[K; 0]ᵀ + [b; b_mask]) in
# fp32 over the V token slots and one mask slot, then h = [W; w_mask]ᵀ p + c replaces the embedding lookup.
CONVERTER_TENSORS = {
    "converter.keys": "K [V, key_dim]: the frozen unit-norm token keys of the channel z = s·K_x + √s·ε",
    "converter.token_weight": "W [V, hidden]: the embedding each token slot maps to",
    "converter.token_bias": "b [V]: the token slots' logit bias",
    "converter.mask_weight": "w_mask [hidden]: the mask slot's embedding",
    "converter.mask_bias": "b_mask [1]: the mask slot's logit bias",
    "converter.beta": "beta [1]: the inverse temperature on z·Kᵀ",
    "converter.out_bias": "c [hidden]: added to h",
}


def write_hf(weights: dict[str, torch.Tensor], config: dict, out_dir: Path, dtype: str = "fp32",
             step: int | None = None, source: str | None = None, tokenizer: bool = True) -> None:
    """An MDLM directory from our full weights and run config, into `out_dir` (exists, empty): the backbone
    (model.safetensors, config.json, the modeling code), a DSL model's converter beside it, the tokenizer files
    (GPT-2 runs) and a model card (README.md)."""
    info = hf_config(config, weights, dtype)
    save_tensors(to_hf_names(weights, info["n_heads"]), out_dir / WEIGHTS, DTYPES[dtype])
    converter = {k: v for k, v in weights.items() if k.startswith("converter.")}
    if converter:
        save_tensors(converter, out_dir / CONVERTER, None)
    (out_dir / "config.json").write_text(json.dumps(info, indent=2))
    for name in CODE_FILES:
        shutil.copyfile(CODE_DIR / name, out_dir / name)
    tokenizer_name = (config.get("data") or {}).get("tokenizer", "gpt2")
    wrote_tokenizer = tokenizer and tokenizer_name == "gpt2"
    if wrote_tokenizer:
        for name, data in gpt2_tokenizer_files().items():
            (out_dir / name).write_bytes(data)
    (out_dir / "README.md").write_text(model_card(config, info, step, source, wrote_tokenizer))


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer_files() -> dict[str, bytes]:
    """transformers' fast-tokenizer files of our GPT-2 tokenizer (tokenizer.py): GPT-2's BPE from the same
    gpt2.tiktoken, <|endoftext|> = 50256 as BOS/EOS, [MASK] = 50257. Built once per process (a few seconds)."""
    import tempfile

    from tiktoken_ext.openai_public import r50k_pat_str
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from dsl_scale.tokenizer import ENDOFTEXT, MASK_TEXT, get_tokenizer, gpt2_tiktoken_path

    ours = get_tokenizer("gpt2")
    converted = TikTokenConverter(vocab_file=gpt2_tiktoken_path(), pattern=r50k_pat_str,
                                  additional_special_tokens={ENDOFTEXT: ours.eos_id}).converted()
    fast = PreTrainedTokenizerFast(tokenizer_object=converted, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                   unk_token=ENDOFTEXT, model_max_length=int(1e30))
    fast.add_special_tokens({"mask_token": MASK_TEXT})
    if fast.mask_token_id != ours.mask_id or len(fast) != ours.vocab_size:
        raise RuntimeError(f"the exported tokenizer puts {MASK_TEXT} at {fast.mask_token_id} (vocabulary "
                           f"{len(fast)}), ours at {ours.mask_id} ({ours.vocab_size})")
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def model_card(config: dict, info: dict, step: int | None, source: str | None, tokenizer: bool) -> str:
    """README.md of an export: what the model is, how it was trained, how to load it."""
    objective = (config.get("objective") or {}).get("name", "mdlm")
    model, data = config.get("model") or {}, config.get("data") or {}
    optim, train = config.get("optim") or {}, config.get("train") or {}
    shape = (f"{info['n_blocks']} blocks, hidden {info['hidden_dim']}, {info['n_heads']} heads, cond_dim "
             f"{info['cond_dim']}, vocabulary {info['vocab_size']}, trained at L = {info['model_length']}")
    recipe = ", ".join(f"{k} {v}" for k, v in (
        ("lr", optim.get("lr")), ("warm-up", optim.get("warmup_steps")), ("schedule", optim.get("schedule")),
        ("min_lr_ratio", optim.get("min_lr_ratio")), ("global batch", train.get("global_batch")),
        ("steps", train.get("steps")), ("EMA", train.get("ema")), ("dropout", model.get("dropout")),
        ("precision", train.get("precision")), ("seed", train.get("seed"))) if v is not None)
    lines = [
        "---", "library_name: transformers", "tags: [masked-diffusion, mdlm" + (", dsl" if objective == "dsl" else "")
        + "]", "---", "", f"# {'DSL' if objective == 'dsl' else objective.upper()} model exported by dsl-scale", "",
        f"- Objective: **{objective}**" + {
            "mdlm": " (masked diffusion, log-linear schedule, NELBO)",
            "dsl": " (Discrete Stochastic Localization: unweighted cross-entropy under the localization channel)",
        }.get(objective, ""),
        f"- Architecture: MDLM's DiT ({shape}); time conditioning {info['time_conditioning']}",
        f"- Data: {data.get('path', '?')} (source {data.get('source') or 'prepared beforehand'}, tokenizer "
        f"{data.get('tokenizer', 'gpt2')})",
        f"- Steps: {step if step is not None else '?'}" + (f", from {source}" if source else ""),
        f"- Recipe: {recipe}" + (f"; fine-tuned from {config['init_from']}" if config.get("init_from") else ""),
        "", "## Load", "", "```python", "import transformers",
        "model = transformers.AutoModelForMaskedLM.from_pretrained(DIR, trust_remote_code=True)  # MDLM's code",
    ]
    if tokenizer:
        lines += ["tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)  # GPT-2 BPE, [MASK] = 50257",
                  "logits = model(tokenizer('Hello', return_tensors='pt').input_ids)[0]"]
    lines += ["```", "", "With dsl-scale: `dsl-sample checkpoint=DIR sampler=mdlm steps=128` (also a Hub id), "
              "`dsl-finetune init_from=DIR`, `dsl-convert-checkpoint DIR OUT --to consolidated`.", ""]
    if objective == "dsl":
        lines += [
            "## DSL converter", "",
            f"The backbone above is plain MDLM: reference MDLM code loads it and feeds it tokens and [MASK] through "
            f"the embedding table. DSL's converter, which maps a noisy observation z (key_dim "
            f"{info['dsl_scale']['key_dim']}, key seed {info['dsl_scale']['key_seed']}) to the backbone's input "
            f"embedding, is in `{CONVERTER}` beside it (MDLM code ignores that file; dsl-scale reads it back):", "",
            "p = softmax(beta · z·Kᵀ + b over the V token slots, with one mask slot of logit b_mask), in fp32;",
            "h = Σ_v p_v W_v + p_mask · w_mask + c replaces the embedding lookup of that position.", "",
            "| tensor | meaning |", "|---|---|",
            *(f"| `{name}` | {meaning} |" for name, meaning in CONVERTER_TENSORS.items()), ""]
    return "\n".join(lines)


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
