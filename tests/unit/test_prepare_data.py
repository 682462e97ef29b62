from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsl_scale.cli import prepare_data as cli
from dsl_scale.data.loader import check_manifest, open_shards
from dsl_scale.data.packing import pack_blocks
from dsl_scale.data.prepare import prepare, split_documents
from dsl_scale.data.sources import iter_documents
from dsl_scale.tokenizer import ENDOFTEXT, get_tokenizer

L = 64


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _blocks(out: Path, split: str) -> np.ndarray:
    ds = open_shards(str(out), split)
    return np.stack([ds[i] for i in range(len(ds))])


def _stream(docs: list[str]) -> list[int]:
    tok = get_tokenizer()
    return [t for ids in tok.encode_batch(docs) for t in ids + [tok.eos_id]]


def test_wikipedia_sample_reads_like_prose(wiki_docs):
    assert 100 <= len(wiki_docs) <= 110
    assert wiki_docs[0].startswith("Anarchism is a political philosophy")
    text = "\n".join(wiki_docs)
    for markup in ("'''", "''", "==", "[[", "{{", "#REDIRECT", "\n\n\n", "  "):
        assert markup not in text, markup


def test_manifest_matches_disk(wiki_shards, wiki_docs):
    m = _manifest(wiki_shards)
    assert {k: m[k] for k in ("format", "source", "tokenizer", "vocab_size", "seq_len", "version")} == {
        "format": "mds", "source": "wikipedia-sample", "tokenizer": "gpt2", "vocab_size": 50258,
        "seq_len": L, "version": 2,
    }
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(wiki_docs)
    for split in ("train", "val"):
        s = m["splits"][split]
        index = json.loads((wiki_shards / split / "index.json").read_text())
        on_disk = sum(shard["samples"] for shard in index["shards"])
        assert on_disk == s["blocks"] == len(open_shards(str(wiki_shards), split))
        assert s["blocks"] * (L - 2) <= s["tokens"] < (s["blocks"] + 1) * (L - 2)
    assert len(list((wiki_shards / "train").glob("g*/shard.*.mds"))) > 1
    check_manifest(str(wiki_shards), L, "gpt2", 50258)


def test_blocks_are_wrapped_with_bos_and_eos(wiki_shards):
    tok = get_tokenizer()
    for split in ("train", "val"):
        blocks = _blocks(wiki_shards, split)
        assert blocks.dtype == np.int32 and blocks.shape[1] == L
        assert (blocks[:, 0] == tok.bos_id).all() and (blocks[:, -1] == tok.eos_id).all()
        assert blocks.min() >= 0 and blocks.max() < tok.mask_id


def test_round_trip_and_document_split(wiki_shards, wiki_docs):
    tok = get_tokenizer()
    train_docs, val_docs = split_documents(wiki_docs, 0.05)
    assert len(val_docs) >= 1 and train_docs + val_docs == wiki_docs
    assert not set(train_docs) & set(val_docs)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        inner = _blocks(wiki_shards, split)[:, 1:-1].reshape(-1).tolist()
        stream = _stream(docs)
        assert len(stream) - len(inner) < L - 2  # only the final remainder is dropped
        assert inner == stream[: len(inner)]  # so no block mixes in the other split's documents
        text = "".join(d + ENDOFTEXT for d in docs)
        assert text.startswith(tok.decode(inner).rstrip("\ufffd"))  # a cut may split a multi-byte char
    assert tok.decode(_stream(train_docs)) == "".join(d + ENDOFTEXT for d in train_docs)


def test_pack_blocks_layout():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]  # stream: 1 2 3 E 4 5 E 6 7 8 9 E (12 tokens)
    blocks = list(pack_blocks(docs, seq_len=7, bos_id=0, eos_id=99))
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3, 99, 4, 99], [0, 5, 99, 6, 7, 8, 99]]
    assert all(b.dtype == np.int32 for b in blocks)


def test_local_jsonl_txt_and_folder_sources(tmp_path, make_documents, write_jsonl):
    docs = make_documents(12, seed=3)
    jsonl = write_jsonl(tmp_path / "docs.jsonl", docs)
    assert list(iter_documents(str(jsonl))) == docs
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    (folder / "b" / "2.txt").write_text(docs[1], encoding="utf-8")
    (folder / "a.txt").write_text(docs[0], encoding="utf-8")
    (folder / "ignored.md").write_text("not a source", encoding="utf-8")
    write_jsonl(folder / "b" / "1.jsonl", docs[2:5])
    assert list(iter_documents(str(folder / "a.txt"))) == [docs[0]]
    assert list(iter_documents(str(folder))) == [docs[0], *docs[2:5], docs[1]]  # sorted paths: a, b/1, b/2

    m = prepare(str(jsonl), str(tmp_path / "out"), 16, val_fraction=0.2, progress=False)
    assert m["splits"]["val"]["documents"] == 2 and m["splits"]["train"]["documents"] == 10
    check_manifest(str(tmp_path / "out"), 16, "gpt2", 50258)
    m = prepare(str(folder), str(tmp_path / "out_folder"), 8, val_fraction=0.2, progress=False)
    assert m["splits"]["train"]["documents"] == 4


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match=r"no-such-corpus.*wikipedia-sample"):
        iter_documents("no-such-corpus")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        iter_documents(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        list(iter_documents(str(bad)))


def test_cli_writes_summary_and_refuses_overwrite(tmp_path, tiny_corpus, capsys):
    args = ["--source", str(tiny_corpus[0]), "--out", str(tmp_path / "d"), "--seq-len", "32"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "blocks" in out
    with pytest.raises(SystemExit):
        cli.main(args)
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite", "--val-fraction", "0.5", "--format", "both", "--workers", "2",
                     "--docs-per-group", "20"]) == 0
    m = _manifest(tmp_path / "d")
    assert m["val_fraction"] == 0.5 and m["format"] == "both" and m["splits"]["train"]["groups"] == 2
    assert "wds: train" in capsys.readouterr().out


def _files(out: Path) -> dict[str, str]:
    """Every shard and index of a prepared directory with its sha256 (the manifest aside: it has times)."""
    from dsl_scale.data.writers import file_sha256

    return {str(p.relative_to(out)): file_sha256(str(p)) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def test_parallel_resumable_checksummed_preparation(tmp_path, tiny_corpus, monkeypatch):
    from dsl_scale.data import prepare as prepare_module

    args = dict(val_fraction=0.2, shard_size_bytes=4096, fmt="both", docs_per_group=10, progress=False)
    serial = prepare(str(tiny_corpus[0]), str(tmp_path / "serial"), 32, **args)
    assert serial["groups_built"] == 7 and serial["splits"]["train"]["groups"] == 5
    for fmt in ("mds", "wds"):
        for split in ("train", "val"):
            shards = serial["shards"][fmt][split]
            assert sum(s["samples"] for s in shards) == serial["splits"][split]["blocks"]
            assert {s["file"]: s["sha256"] for s in shards}.items() <= _files(tmp_path / "serial").items()
    parallel = prepare(str(tiny_corpus[0]), str(tmp_path / "parallel"), 32, workers=2, **args)
    assert parallel["shards"] == serial["shards"] and _files(tmp_path / "parallel") == _files(tmp_path / "serial")

    real_build = prepare_module.build_group

    def crash_in_group_3(out, split, g, docs, settings):
        if split == "train" and g == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_build(out, split, g, docs, settings)

    out = tmp_path / "resumed"
    monkeypatch.setattr(prepare_module, "build_group", crash_in_group_3)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(tiny_corpus[0]), str(out), 32, **args)
    assert not (out / "manifest.json").exists() and (out / "train" / "g00002" / "done.json").exists()
    with pytest.raises(FileExistsError, match="unfinished preparation with other settings"):
        prepare(str(tiny_corpus[0]), str(out), 32, **{**args, "docs_per_group": 7})
    monkeypatch.setattr(prepare_module, "build_group", real_build)
    resumed = prepare(str(tiny_corpus[0]), str(out), 32, **args)
    assert resumed["groups_built"] == 4  # train groups 3 and 4, and both val groups
    assert resumed["shards"] == serial["shards"] and _files(out) == _files(tmp_path / "serial")
    check_manifest(str(out), 32, "gpt2", 50258, verify_checksums=True)
    check_manifest(str(out), 32, "gpt2", 50258, fmt="wds", verify_checksums=True)
