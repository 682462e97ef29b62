"""Causal language models that score samples for generative perplexity: a Hugging Face model from a
local directory, or one of our AR-objective checkpoints. Both run on the compute device (core/device.py)
in fp32: a reported metric should not change with the machine's default precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from dsl_scale.core.device import compute_device
from dsl_scale.tokenizer import Tokenizer, get_tokenizer


class Scorer(Protocol):
    context: int  # longest id sequence (its BOS included) one forward pass takes
    bos_id: int
    eos_id: int
    same_vocab: bool  # True when the scorer reads our GPT-2 ids as they are
    device: torch.device  # where `logits` wants its inputs (gen_ppl.chunk_nll builds them there)

    def identity(self) -> dict[str, Any]: ...

    def encode(self, text: str) -> list[int]: ...

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[b, s] ids (right-padded; mask 1 on real ids) → [b, s, V] next-token logits."""
        ...


class HFScorer:
    def __init__(self, path: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"scorer={path}: not a directory (a local Hugging Face causal LM or one of "
                                    f"our AR run directories; nothing is downloaded at run time)")
        self.path = path
        self.device = compute_device()
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        self.model = self.model.to(device=self.device, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = self.model.config
        self.context = int(getattr(config, "n_positions", None) or config.max_position_embeddings)
        tok = self.tokenizer
        self.eos_id = _first_id(tok.eos_token_id, tok.sep_token_id, config.eos_token_id)
        self.bos_id = _first_id(tok.bos_token_id, tok.cls_token_id, config.bos_token_id, self.eos_id)
        ours = get_tokenizer("gpt2")
        probe = "The river flows north, past 1,024 stones."
        self.same_vocab = (len(tok) == ours.vocab_size - 1 and self.eos_id == ours.eos_id
                           and self.encode(probe) == ours.encode(probe))

    def identity(self) -> dict[str, Any]:
        return {"kind": "huggingface", "path": str(self.path), "model_type": self.model.config.model_type,
                "context": self.context, "retokenized": not self.same_vocab}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).logits


class CheckpointScorer:
    """An AR-objective checkpoint of ours: causal, logits at i predict token i + 1, same vocabulary."""

    def __init__(self, path: str, weights: str = "auto"):
        from dsl_scale.checkpoint.inference import load_for_inference
        from dsl_scale.parallel.topology import init_process_groups

        init_process_groups(1, 1)
        loaded = load_for_inference(path, weights, precision="fp32")
        if loaded.train_config.objective.name != "ar":
            raise ValueError(f"scorer={path} was trained with objective={loaded.train_config.objective.name}; "
                             "generative perplexity needs a causal (objective=ar) checkpoint")
        self.path, self.loaded, self.device = path, loaded, loaded.device
        self.tokenizer: Tokenizer = loaded.tokenizer
        self.context = loaded.train_config.model.seq_len
        self.bos_id, self.eos_id, self.same_vocab = self.tokenizer.bos_id, self.tokenizer.eos_id, True

    def identity(self) -> dict[str, Any]:
        return {"kind": "dsl_scale-ar", "path": str(self.path), "checkpoint_dir": str(self.loaded.checkpoint_dir),
                "weights": self.loaded.weights, "context": self.context, "retokenized": False}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from dsl_scale.diffusion.mdlm import suppress_mask_logit_

        return suppress_mask_logit_(self.loaded.model(ids).float(), self.tokenizer.mask_id)


def _first_id(*candidates: int | None) -> int:
    for c in candidates:
        if c is not None:
            return int(c)
    raise ValueError("the scorer's tokenizer defines neither BOS/CLS nor EOS/SEP ids")


def build_scorer(path: str, weights: str = "auto") -> Scorer:
    """One of our checkpoints (anything checkpoint/source.py opens as ours), else a Hugging Face causal LM: a
    directory or a Hub id in huggingface_hub's cache."""
    from dsl_scale.checkpoint.source import hf_directory, is_ours

    return CheckpointScorer(path, weights) if is_ours(path) else HFScorer(str(hf_directory(path)))
