"""What is evaluated: the samples file with its settings sidecar, and the reference blocks of docs/method.md §6."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsl_scale.data.loader import open_shards
from dsl_scale.tokenizer import ENDOFTEXT, Tokenizer

SETTINGS_SUFFIX = ".settings.json"


@dataclass
class Samples:
    tokens: list[list[int]]
    texts: list[str]
    nfe: list[float]
    settings: dict[str, Any] = field(default_factory=dict)  # the sampler's sidecar, empty when absent
    remasks: list[list[list[int]]] = field(default_factory=list)  # per sample [step, position, token] ([] if none)

    def __len__(self) -> int:
        return len(self.tokens)


def read_samples(path: str | Path, tokenizer: Tokenizer) -> Samples:
    """samples.jsonl lines in `index` order; `tokens` wins over `text` when a line has both."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist (write one with launchers/sample.py)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n} is not JSON ({err})") from err
        if "tokens" not in record and "text" not in record:
            raise ValueError(f"{path}:{n} has neither `tokens` nor `text`")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no samples")
    records.sort(key=lambda r: r.get("index", 0))
    tokens = [[int(t) for t in r["tokens"]] if "tokens" in r else tokenizer.encode(r["text"]) for r in records]
    nfe = [float(r["nfe"]) for r in records if "nfe" in r]
    settings = read_settings(path)
    remasks = [[list(map(int, e)) for e in r.get("remasks", [])] for r in records]
    return Samples(tokens, [metric_text(t, tokenizer) for t in tokens], nfe, settings, remasks)


def read_settings(samples: str | Path) -> dict[str, Any]:
    """The sampler's sidecar of a samples file (empty when absent)."""
    file = Path(f"{samples}{SETTINGS_SUFFIX}")
    return json.loads(file.read_text()) if file.is_file() else {}


def tokenizer_name(samples: str, reference: str) -> str:
    """The samples' tokenizer, from their sidecar (launchers/sample.py records it) and the reference data's
    manifest; the two must agree. GPT-2 when neither says (e.g. a text-only samples file)."""
    from dsl_scale.data.loader import read_manifest

    named: dict[str, str] = {}
    recorded = read_settings(samples).get("tokenizer") if samples else None
    if recorded:
        named[f"{samples}{SETTINGS_SUFFIX}"] = recorded
    if reference:
        named[f"{reference}/manifest.json"] = read_manifest(reference)["tokenizer"]
    if len(set(named.values())) > 1:
        raise ValueError(f"the samples and the references use different tokenizers: {named}; sample from a "
                         "checkpoint trained on data with the reference's tokenizer, or prepare matching references")
    return next(iter(named.values()), "gpt2")


def metric_text(tokens: list[int], tokenizer: Tokenizer) -> str:
    """The text a featurizer sees, decoded the same way for samples and references: the BOS/EOS framing
    of a block becomes paragraph breaks instead of literal '<|endoftext|>' strings."""
    return tokenizer.decode(tokens).replace(ENDOFTEXT, "\n").strip()


def reference_indices(available: int, count: int) -> list[int]:
    """`count` blocks spread evenly over the split (more documents than its first blocks would cover)."""
    if count > available:
        raise ValueError(f"{count} samples but the reference split has only {available} blocks; evaluate "
                         f"fewer samples or prepare a larger validation split")
    return [i * available // count for i in range(count)]


def reference_tokens(shard_dir: str, split: str, lengths: list[int]) -> list[list[int]]:
    """One validation block per sample, cut to that sample's token length (same count, same length)."""
    blocks = open_shards(shard_dir, split)
    longest = max(lengths)
    if longest > blocks.seq_len:
        raise ValueError(f"samples are up to {longest} tokens long but {shard_dir} holds {blocks.seq_len}-token "
                         f"blocks; prepare references with tools/prepare_data.py --seq-len {longest} or more")
    picked = reference_indices(len(blocks), len(lengths))
    return [np.asarray(blocks[i][:n]).tolist() for i, n in zip(picked, lengths)]
