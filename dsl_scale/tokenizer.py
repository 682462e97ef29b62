"""Tokenizers by name (`get_tokenizer`): "gpt2" and "char".

"gpt2": GPT-2 BPE, loaded offline, plus a [MASK] id appended after the GPT-2 vocabulary. The BPE ranks
come from the `gpt2.tiktoken` file that ships inside the `openai-whisper` package. We only read that
file; `whisper` itself is never imported (it would pull in heavy dependencies).
"char": text8-style characters (a-z and space) plus <|endoftext|> and [MASK] (`CharTokenizer`).
"synthetic" (64 symbols) or "synthetic-N" (N symbols): the ids of the `synthetic-hmm` data source
(`SyntheticTokenizer`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import unicodedata
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
    """What every tokenizer offers: ids for text and back, and its special ids ([MASK] is the last id)."""

    name: str
    vocab_size: int
    mask_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, mask_id={self.mask_id})"


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE with [MASK] = 50257 appended (vocab_size 50258); BOS = EOS = <|endoftext|> = 50256."""

    name = "gpt2"

    def __init__(self) -> None:
        self._enc = _load_gpt2_encoding()
        self.vocab_size = _GPT2_N_VOCAB + 1
        self.mask_id = _GPT2_N_VOCAB
        self.eos_id = _GPT2_EOT_ID
        self.bos_id = _GPT2_EOT_ID

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


CHAR_ALPHABET = " abcdefghijklmnopqrstuvwxyz"  # ids 0..26, space first
_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
_NOT_LETTER = re.compile(r"[^a-z]+")


def normalize_text8(text: str) -> str:
    """text8's normalisation: accents stripped, lower case, each digit spelled out ('1539' -> 'one five three
    nine'), every other run of non-letters one space; no leading or trailing space."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[0-9]", lambda m: f" {_DIGIT_WORDS[int(m.group())]} ", text)
    return _NOT_LETTER.sub(" ", text).strip()


class CharTokenizer(Tokenizer):
    """text8-style characters: space and a-z (ids 0-26), BOS = EOS = <|endoftext|> = 27, [MASK] = 28."""

    name = "char"

    def __init__(self) -> None:
        self.vocab_size = len(CHAR_ALPHABET) + 2
        self.eos_id = self.bos_id = len(CHAR_ALPHABET)
        self.mask_id = len(CHAR_ALPHABET) + 1
        self._ids = {c: i for i, c in enumerate(CHAR_ALPHABET)}
        self._pieces = [*CHAR_ALPHABET, ENDOFTEXT, MASK_TEXT]

    def encode(self, text: str) -> list[int]:
        """The text normalised with `normalize_text8` first, so every id is a letter or the space."""
        return [self._ids[c] for c in normalize_text8(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """[MASK] renders as '[MASK]', BOS/EOS as '<|endoftext|>'; an id outside the vocabulary is an error."""
        ids = _to_int_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the char vocabulary (0..{self.vocab_size - 1})")
        return "".join(self._pieces[i] for i in ids)


class SyntheticTokenizer(Tokenizer):
    """N abstract symbols (ids 0..N-1, written `s0 s1 …`), BOS = EOS = <|endoftext|> = N, [MASK] = N + 1.
    Named "synthetic" for N = 64 (the `synthetic-hmm` default), else "synthetic-N"."""

    DEFAULT_SYMBOLS = 64

    def __init__(self, symbols: int = DEFAULT_SYMBOLS) -> None:
        if symbols < 1:
            raise ValueError(f"a synthetic tokenizer needs at least one symbol, got {symbols}")
        self.symbols = symbols
        self.name = "synthetic" if symbols == self.DEFAULT_SYMBOLS else f"synthetic-{symbols}"
        self.vocab_size = symbols + 2
        self.eos_id = self.bos_id = symbols
        self.mask_id = symbols + 1

    def encode(self, text: str) -> list[int]:
        """Whitespace-separated symbols `sK`; anything else is an error naming it."""
        ids = []
        for word in text.split():
            k = int(word[1:]) if word[:1] == "s" and word[1:].isdigit() else -1
            if not 0 <= k < self.symbols:
                raise ValueError(f"{word!r} is not a symbol of the {self.name} tokenizer (s0 … s{self.symbols - 1})")
            ids.append(k)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = _to_int_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the {self.name} vocabulary (0..{self.vocab_size - 1})")
        specials = {self.eos_id: ENDOFTEXT, self.mask_id: MASK_TEXT}
        return " ".join(specials.get(i, f"s{i}") for i in ids)


_FACTORIES: dict[str, Callable[[], Tokenizer]] = {"gpt2": GPT2Tokenizer, "char": CharTokenizer,
                                                  "synthetic": SyntheticTokenizer}
_SYNTHETIC_N = re.compile(r"synthetic-([1-9][0-9]*)")


def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """Return the tokenizer called `name`, built once per process."""
    if name not in _FACTORIES and not _SYNTHETIC_N.fullmatch(name):
        raise ValueError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(sorted(_FACTORIES))}, "
                         "synthetic-N (N symbols)")
    return _build(name)


@functools.cache
def _build(name: str) -> Tokenizer:
    synthetic = _SYNTHETIC_N.fullmatch(name)
    if synthetic:
        tokenizer = SyntheticTokenizer(int(synthetic[1]))
        if tokenizer.name != name:  # "synthetic-64" is spelled "synthetic"
            raise ValueError(f"tokenizer {name!r}: call it {tokenizer.name!r}")
        return tokenizer
    return _FACTORIES[name]()


def clear_tokenizer_cache() -> None:
    """Forget built tokenizers (e.g. after changing $DSL_SCALE_GPT2_TIKTOKEN)."""
    _build.cache_clear()
