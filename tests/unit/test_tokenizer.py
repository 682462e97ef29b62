from __future__ import annotations

import numpy as np
import pytest
import torch

from dsl_scale.tokenizer import ENV_GPT2_FILE, clear_tokenizer_cache, get_tokenizer

TEXT = (
    "The Wikipedia article on anarchism begins:\n\nAnarchism is a political philosophy that advocates "
    "self-governed societies — “stateless” ones — founded in 1539?! Ünïcödé, 日本語, tabs\tand  spaces."
)


@pytest.fixture
def tok():
    return get_tokenizer("gpt2")


def test_gpt2_ids_and_vocab(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.name, tok.vocab_size, tok.mask_id) == ("gpt2", 50258, 50257)
    assert tok.bos_id == tok.eos_id == 50256
    assert get_tokenizer() is tok


def test_round_trip_real_text(tok):
    ids = tok.encode(TEXT)
    assert max(ids) < 50256
    assert tok.decode(ids) == TEXT
    assert tok.encode_batch([TEXT, "Hello world"]) == [ids, [15496, 995]]


def test_special_strings_in_text_stay_ordinary(tok):
    ids = tok.encode("a <|endoftext|> b")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "a <|endoftext|> b"


def test_mask_and_eos_rendering(tok):
    ids = [15496, tok.mask_id, 995, tok.eos_id, tok.mask_id]
    expected = "Hello[MASK] world<|endoftext|>[MASK]"
    assert tok.decode(ids) == expected
    assert tok.decode(np.array(ids, dtype=np.int32)) == expected
    assert tok.decode(torch.tensor(ids)) == expected


def test_unknown_tokenizer_lists_known():
    with pytest.raises(ValueError, match="gpt2"):
        get_tokenizer("nope")


def test_missing_bpe_file_names_path_and_fix(monkeypatch, tmp_path):
    missing = tmp_path / "missing" / "gpt2.tiktoken"
    monkeypatch.setenv(ENV_GPT2_FILE, str(missing))
    clear_tokenizer_cache()
    try:
        with pytest.raises(FileNotFoundError) as info:
            get_tokenizer("gpt2")
        message = str(info.value)
        assert str(missing) in message
        assert "pip install --no-deps openai-whisper" in message and ENV_GPT2_FILE in message
    finally:
        clear_tokenizer_cache()
