"""GPT-2 BPE, loaded offline, plus a [MASK] id appended after the GPT-2 vocabulary.

The BPE ranks come from the `gpt2.tiktoken` file that ships inside the `openai-whisper` package.
We only read that file; `whisper` itself is never imported (it would pull in heavy dependencies).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenisation regex

ENV_GPT2_FILE = "DSL_SCALE_GPT2_TIKTOKEN"
ENDOFTEXT = "<|endoftext|>"
MASK_TEXT = "[MASK]"
_GPT2_EOT_ID = 50256
_GPT2_N_VOCAB = 50257


def gpt2_tiktoken_path() -> str:
    """Where the GPT-2 BPE file is looked for: $DSL_SCALE_GPT2_TIKTOKEN, else inside openai-whisper."""
    override = os.environ.get(ENV_GPT2_FILE)
    if override:
        return override
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return "<openai-whisper not installed>/assets/gpt2.tiktoken"
    return os.path.join(list(spec.submodule_search_locations)[0], "assets", "gpt2.tiktoken")


def _load_gpt2_encoding() -> tiktoken.Encoding:
    path = gpt2_tiktoken_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"GPT-2 BPE file not found at {path}. Fix: `pip install --no-deps openai-whisper` "
            f"(it ships assets/gpt2.tiktoken), or set {ENV_GPT2_FILE}=/path/to/gpt2.tiktoken."
        )
    ranks = load_tiktoken_bpe(path)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: _GPT2_EOT_ID},
        explicit_n_vocab=_GPT2_N_VOCAB,
    )


def _to_int_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
        ids = ids.tolist()
    return [int(i) for i in ids]


class Tokenizer:
    """GPT-2 BPE with [MASK] = 50257 appended (vocab_size 50258); BOS = EOS = <|endoftext|> = 50256."""

    name = "gpt2"

    def __init__(self) -> None:
        self._enc = _load_gpt2_encoding()
        self.vocab_size: int = _GPT2_N_VOCAB + 1
        self.mask_id: int = _GPT2_N_VOCAB
        self.eos_id: int = _GPT2_EOT_ID
        self.bos_id: int = _GPT2_EOT_ID

    def encode(self, text: str) -> list[int]:
        """Ordinary text only: a literal '<|endoftext|>' in the text is encoded as plain characters."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Decode a list, numpy array or torch tensor; [MASK] renders as '[MASK]', EOS as '<|endoftext|>'."""
        ids = _to_int_list(ids)
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i == self.mask_id:
                if run:
                    pieces.append(self._enc.decode(run, errors="replace"))
                    run = []
                pieces.append(MASK_TEXT)
            else:
                run.append(i)
        if run:
            pieces.append(self._enc.decode(run, errors="replace"))
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, mask_id={self.mask_id})"


# Later tokenizers (e.g. a "char" tokenizer for tiny tests) register a factory here.
_FACTORIES: dict[str, Callable[[], Tokenizer]] = {"gpt2": Tokenizer}


def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """Return the tokenizer called `name`, built once per process."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(sorted(_FACTORIES))}")
    return _build(name)


@functools.cache
def _build(name: str) -> Tokenizer:
    return _FACTORIES[name]()


def clear_tokenizer_cache() -> None:
    """Forget built tokenizers (e.g. after changing $DSL_SCALE_GPT2_TIKTOKEN)."""
    _build.cache_clear()
