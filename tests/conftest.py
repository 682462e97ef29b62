"""Shared data fixtures: shards are built once per session (tiny synthetic corpus, and the wiki sample)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsl_scale.core import patches
from dsl_scale.data import sources
from dsl_scale.data.prepare import prepare

WORDS = (
    "the a river city music of and to in history language light small ancient modern people was is "
    "north south king queen water stone year century many several first new old great"
).split()


@pytest.fixture(autouse=True)
def _undo_framework_patches():
    """Each test starts without framework patches (dsl_scale/core/patches.py): code that needs one applies it
    itself (cpu_compat.install(), import_streaming(), ...), and none leaks into the next test."""
    yield
    patches.undo_all()


def make_documents(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(20, 120)))
        docs.append(f"Document {i}. " + " ".join(words).capitalize() + ".")
    return docs


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(name="make_documents")
def make_documents_fixture():
    return make_documents


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture():
    return write_jsonl


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    docs = make_documents(60)
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "tiny.jsonl", docs), docs


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: tuple[Path, list[str]]) -> Path:
    """seq_len 32, small shards so each split has several shard files."""
    out = tmp_path_factory.mktemp("tiny_shards")
    prepare(str(tiny_corpus[0]), str(out), 32, val_fraction=0.2, shard_size_bytes=4096, progress=False)
    return out


@pytest.fixture(scope="session")
def wiki_docs() -> list[str]:
    return list(sources.iter_documents("wikipedia-sample"))


@pytest.fixture(scope="session")
def wiki_shards(tmp_path_factory: pytest.TempPathFactory, wiki_docs: list[str]) -> Path:
    """The real wikipedia-sample at seq_len 64; the registry entry is served from the already-read docs."""
    out = tmp_path_factory.mktemp("wiki64")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sources.SOURCES, "wikipedia-sample", lambda: iter(wiki_docs))
        prepare("wikipedia-sample", str(out), 64, val_fraction=0.05, shard_size_bytes=1 << 16, progress=False)
    return out


@pytest.fixture(scope="session")
def process_group():
    """A world of one (gloo) with megatron-core's TP=PP=1 groups, for code built from megatron layers."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from dsl_scale.parallel.topology import free_port

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    yield


@pytest.fixture(scope="session")
def both_shards(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: tuple[Path, list[str]]) -> Path:
    """The tiny corpus at seq_len 32 in both formats: small shards (dozens of webdataset tars), 3 train groups."""
    out = tmp_path_factory.mktemp("both_shards")
    prepare(str(tiny_corpus[0]), str(out), 32, val_fraction=0.2, shard_size_bytes=4096, fmt="both",
            docs_per_group=20, progress=False)
    return out
