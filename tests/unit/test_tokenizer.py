from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def char():
    return get_tokenizer("char")


def test_char_vocabulary_and_specials(char):
    assert (char.name, char.vocab_size, char.bos_id, char.eos_id, char.mask_id) == ("char", 29, 27, 27, 28)
    assert char.encode("ab z") == [1, 2, 0, 26]
    assert char.decode([char.bos_id, 1, char.mask_id, 0, 26, char.eos_id]) == "<|endoftext|>a[MASK] z<|endoftext|>"
    assert char.decode(torch.tensor([8, 9])) == char.decode(np.array([8, 9], dtype=np.int32)) == "hi"


def test_char_normalises_like_text8(char):
    text = char.decode(char.encode(TEXT))
    assert text.startswith("the wikipedia article on anarchism begins anarchism is a political philosophy")
    assert "founded in one five three nine unicode tabs and spaces" in text
    assert set(text) <= set(" abcdefghijklmnopqrstuvwxyz") and "  " not in text and text == text.strip()
    assert char.encode_batch([TEXT, "Hi!"]) == [char.encode(TEXT), [8, 9]]
    assert char.encode("<|endoftext|>") == char.encode("endoftext")  # specials in text stay ordinary


def test_char_rejects_ids_outside_its_vocabulary(char):
    with pytest.raises(ValueError, match="outside the char vocabulary"):
        char.decode([1, 50256])


def test_char_data_prepares_and_round_trips(tmp_path, write_jsonl):
    """tools/prepare_data.py's logic with tokenizer=char: blocks framed by BOS/EOS, manifest says char."""
    from dsl_scale.data.loader import check_manifest, open_shards
    from dsl_scale.data.prepare import prepare

    docs = [f"Document {i}: The river flows north, past {i} stones." for i in range(40)]
    manifest = prepare(str(write_jsonl(tmp_path / "d.jsonl", docs)), str(tmp_path / "out"), 64, val_fraction=0.2,
                       tokenizer="char", progress=False)
    tok = get_tokenizer("char")
    assert (manifest["tokenizer"], manifest["vocab_size"]) == ("char", 29)
    check_manifest(str(tmp_path / "out"), 64, "char", 29)
    block = open_shards(str(tmp_path / "out"), "train")[0].tolist()
    assert block[0] == tok.bos_id and block[-1] == tok.eos_id and max(block) < tok.mask_id
    assert tok.decode(block[1:-1]).startswith("document zero the river flows north past zero stones<|endoftext|>")


def test_evaluation_reads_the_tokenizer_from_the_sidecar_and_the_manifest(tmp_path, write_jsonl):
    from dsl_scale.data.prepare import prepare
    from dsl_scale.evaluation.inputs import read_samples, tokenizer_name

    docs = [f"Document {i}: the river flows north." for i in range(30)]
    data = tmp_path / "data"
    prepare(str(write_jsonl(tmp_path / "d.jsonl", docs)), str(data), 32, val_fraction=0.2, tokenizer="char",
            progress=False)
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"index": 0, "tokens": [27, 8, 9, 0, 20, 8, 5, 18, 5, 27]}\n')
    assert tokenizer_name(str(samples), "") == "gpt2"  # nothing says otherwise
    assert tokenizer_name(str(samples), str(data)) == "char"
    Path(f"{samples}.settings.json").write_text('{"tokenizer": "char"}')
    assert tokenizer_name(str(samples), "") == "char"
    assert read_samples(samples, get_tokenizer("char")).texts == ["hi there"]
    Path(f"{samples}.settings.json").write_text('{"tokenizer": "gpt2"}')
    with pytest.raises(ValueError, match="different tokenizers"):
        tokenizer_name(str(samples), str(data))
