"""The Hugging Face ecosystem at the edges: `hf:` data sources (a dataset saved to disk here, no network), `hf:`
tokenizers (a tokenizer.json trained here), files that are not UTF-8 named or skipped, and a run with no data
refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsl_scale.data.prepare import format_summary, prepare
from dsl_scale.data.sources import Skipped, check_data_given, iter_documents
from dsl_scale.tokenizer import get_tokenizer

datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")


def make_tokenizer_json(path: Path, docs: list[str], with_mask: bool = False) -> Path:
    """A small word-level tokenizer with <|endoftext|> (and, optionally, its own [MASK] as id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[MASK]", "<unk>", "<|endoftext|>"] if with_mask else ["<unk>", "<|endoftext|>"]
    tok.train_from_iterator(docs, trainers.WordLevelTrainer(special_tokens=specials))
    tok.save(str(path))
    return path


def test_a_saved_dataset_is_a_source_with_its_splits(tmp_path: Path, make_documents):
    docs = make_documents(12)
    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs[:8], "id": list(range(8))}),
                          "validation": datasets.Dataset.from_dict({"text": docs[8:]})}).save_to_disk(folder)
    assert list(iter_documents(f"hf:{folder}")) == docs[:8]
    assert list(iter_documents(f"hf:{folder}:validation")) == docs[8:]
    with pytest.raises(ValueError, match="no split 'test' .*splits: train, validation"):
        iter_documents(f"hf:{folder}:test")
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(single)
    with pytest.raises(ValueError, match="no 'text' column .*columns: body"):
        iter_documents(f"hf:{single}")


def test_a_tokenizer_json_gets_mask_as_its_last_id(tmp_path: Path, make_documents):
    docs = make_documents(20)
    tok = get_tokenizer(f"hf:{make_tokenizer_json(tmp_path / 'tokenizer.json', docs)}")
    assert tok.mask_id == tok.vocab_size - 1 and tok.decode([tok.mask_id]) == "[MASK]"
    assert tok.eos_id == tok.bos_id and tok.decode([tok.eos_id]) == "<|endoftext|>"
    ids = tok.encode(docs[0])
    assert ids and max(ids) < tok.mask_id
    assert "".join(tok.decode(ids).split()) == "".join(docs[0].split())  # word-level: spacing differs
    assert tok.describe()["mask_added"] is True
    # a tokenizer whose own [MASK] is not last gets one of ours at the end
    folder = tmp_path / "with_mask"
    folder.mkdir()
    make_tokenizer_json(folder / "tokenizer.json", docs, with_mask=True)
    other = get_tokenizer(f"hf:{folder}")  # a folder holding tokenizer.json
    assert other.mask_id == other.vocab_size - 1 and other.describe()["mask_token"] == "<|dsl_mask|>"
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        get_tokenizer(f"hf:{tmp_path / 'missing.json'}")


def test_prepare_records_the_hf_tokenizer_in_the_manifest(tmp_path: Path, make_documents):
    docs = make_documents(40)
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(folder)
    tokenizer = f"hf:{make_tokenizer_json(tmp_path / 'tok.json', docs)}"
    manifest = prepare(f"hf:{folder}", str(tmp_path / "out"), 16, tokenizer=tokenizer, progress=False)
    assert manifest["tokenizer"] == tokenizer and manifest["tokenizer_details"]["mask_added"] is True
    assert manifest["vocab_size"] == get_tokenizer(tokenizer).vocab_size
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 40
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["tokenizer_details"]["mask_id"] \
        == get_tokenizer(tokenizer).mask_id


def test_a_latin1_file_is_named_or_skipped_and_counted(tmp_path: Path, make_documents):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(make_documents(30)):
        (corpus / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    bad = corpus / "zz_latin1.txt"
    bad.write_bytes("un café à Paris, déjà vu".encode("latin-1"))
    (corpus / "notes.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=rf"{bad}: not UTF-8 text .*--skip-bad-files"):
        prepare(str(corpus), str(tmp_path / "out"), 32, progress=False)
    skipped = Skipped()
    assert len(list(iter_documents(str(corpus), skip_bad_files=True, skipped=skipped))) == 30
    assert len(skipped.bad) == 1 and str(bad) in skipped.bad[0] and skipped.ignored == [str(corpus / "notes.csv")]
    manifest = prepare(str(corpus), str(tmp_path / "out2"), 32, progress=False, skip_bad_files=True)
    assert manifest["skipped"]["bad_files"] == skipped.bad
    summary = format_summary(manifest, str(tmp_path / "out2"))
    assert "skipped: 1 files not UTF-8 text, 1 files of other kinds" in summary and str(bad) in summary


def test_a_gpu_preset_without_data_path_is_refused(tmp_path: Path, monkeypatch):
    from dsl_scale.cli import pretrain
    from tests.unit.test_presets import composed

    cfg = composed("config", ["preset=gpu_small_1node"])
    with pytest.raises(FileNotFoundError, match="data.path=.* does not exist and data.source is empty"):
        check_data_given(cfg.data)
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(FileNotFoundError, match="pass data.path="):
        pretrain.check(cfg)
    (tmp_path / "shards").mkdir()
    pretrain.check(composed("config", ["preset=gpu_small_1node", f"data.path={tmp_path / 'shards'}"]))
    check_data_given(composed("config", ["model=micro"]).data)  # the default: prepared on first use
