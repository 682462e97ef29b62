"""Tokenizers by name (`get_tokenizer`): "gpt2" and "char".

"gpt2": GPT-2 BPE, loaded offline, plus a [MASK] id appended after the GPT-2 vocabulary. The BPE ranks
come from the `gpt2.tiktoken` file that ships inside the `openai-whisper` package. We only read that
file; `whisper` itself is never imported (it would pull in heavy dependencies).
"char": text8-style characters (a-z and space) plus <|endoftext|> and [MASK] (`CharTokenizer`).
"synthetic" (64 symbols) or "synthetic-N" (N symbols): the ids of the `synthetic-hmm` data source
(`SyntheticTokenizer`).
"hf:PATH_OR_ID": any Hugging Face `tokenizers` tokenizer: a tokenizer.json file, a folder holding one, or a Hub
id (`HFTokenizer`); [MASK] is appended as the last id when the tokenizer has none there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
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


HF_PREFIX = "hf:"
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
_BOS_CANDIDATES = ("<|endoftext|>", "<s>", "<bos>", "<|bos|>", "[CLS]")
_OWN_MASK = "<|dsl_mask|>"  # when the tokenizer's own [MASK] is not its last id


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer, named "hf:" + where it comes from. The code everywhere expects
    [MASK] to be the last id: the tokenizer's "[MASK]" when it is, else "[MASK]" (or, when "[MASK]" exists
    elsewhere, "<|dsl_mask|>") added after every other id. EOS is the first of <|endoftext|>, </s>, <eos>,
    [SEP] the tokenizer has (else <|endoftext|> is added before [MASK]), BOS the first of <|endoftext|>, <s>,
    <bos>, [CLS] (else EOS). `describe()` is what the data manifest records of these choices."""

    def __init__(self, spec: str) -> None:
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError as err:
            raise ImportError("tokenizer hf:...: needs the `tokenizers` package (pip install tokenizers)") from err
        self.name = HF_PREFIX + spec
        path = Path(spec)
        file = path / "tokenizer.json" if path.is_dir() else path
        if file.is_file():
            self._tok = Backend.from_file(str(file))
            self._sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
        elif path.exists() or spec.startswith((os.sep, ".", "~")) or spec.endswith(".json"):  # meant a local file
            raise FileNotFoundError(f"tokenizer {self.name}: no tokenizer.json at {file}")
        else:
            try:
                self._tok = Backend.from_pretrained(spec)
            except Exception as err:  # the Hub client's errors: offline, unknown id, no tokenizer.json
                raise ValueError(f"tokenizer {self.name}: not a tokenizer.json file or folder, and the Hub did not "
                                 f"give one ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
            self._sha256 = None
        vocab = self._tok.get_vocab(with_added_tokens=True)
        added = []
        eos = next((tok for tok in _EOS_CANDIDATES if tok in vocab), None)
        if eos is None:
            eos = "<|endoftext|>"
            added.append(eos)
            self._tok.add_special_tokens([eos])
        bos = next((tok for tok in _BOS_CANDIDATES if tok in self._tok.get_vocab(with_added_tokens=True)), eos)
        size = self._tok.get_vocab_size(with_added_tokens=True)
        mask = MASK_TEXT
        if self._tok.token_to_id(MASK_TEXT) != size - 1:
            mask = MASK_TEXT if self._tok.token_to_id(MASK_TEXT) is None else _OWN_MASK
            added.append(mask)
            self._tok.add_special_tokens([mask])
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.mask_id = self._tok.token_to_id(mask)
        if self.mask_id != self.vocab_size - 1:
            raise ValueError(f"tokenizer {self.name}: its ids are not contiguous ({mask} got {self.mask_id}, "
                             f"{self.vocab_size} ids), so [MASK] cannot be the last id")
        self.eos_id, self.bos_id = self._tok.token_to_id(eos), self._tok.token_to_id(bos)
        self._info = {"kind": "hf", "source": spec, "tokenizer_json_sha256": self._sha256,
                      "vocab_size": self.vocab_size, "mask_token": mask, "mask_id": self.mask_id,
                      "mask_added": mask in added, "eos_token": eos, "bos_token": bos, "added_tokens": added}

    def describe(self) -> dict[str, Any]:
        return dict(self._info)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(_to_int_list(ids), skip_special_tokens=False)


_FACTORIES: dict[str, Callable[[], Tokenizer]] = {"gpt2": GPT2Tokenizer, "char": CharTokenizer,
                                                  "synthetic": SyntheticTokenizer}
_SYNTHETIC_N = re.compile(r"synthetic-([1-9][0-9]*)")


def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """Return the tokenizer called `name`, built once per process."""
    if name not in _FACTORIES and not _SYNTHETIC_N.fullmatch(name) and not name.startswith(HF_PREFIX):
        raise ValueError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(sorted(_FACTORIES))}, "
                         "synthetic-N (N symbols), hf:PATH_OR_ID (a tokenizer.json, its folder or a Hub id)")
    return _build(name)


@functools.cache
def _build(name: str) -> Tokenizer:
    if name.startswith(HF_PREFIX):
        return HFTokenizer(name[len(HF_PREFIX):])
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
