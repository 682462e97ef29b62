"""MAUVE on real Wikipedia text with the offline MiniLM featurizer, through `evaluate` (docs/method.md §6)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from dsl_scale.data.loader import open_shards
from dsl_scale.data.prepare import prepare
from dsl_scale.evaluation.config import EvalConfig
from dsl_scale.evaluation.mauve import PROTOCOL
from dsl_scale.evaluation.run import evaluate
from dsl_scale.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def mixed_wiki(tmp_path_factory, wiki_docs) -> Path:
    """Wikipedia cut into ~600-character pieces, shuffled, 30% held out: the validation split then spans
    every article, so held-out text and training text come from one distribution (the plain tail split
    of the sample is only ~5 articles, a different distribution at a few hundred blocks)."""
    pieces, buf = [], ""
    for doc in wiki_docs:
        for para in filter(str.strip, doc.split("\n")):
            buf += para + "\n"
            if len(buf) > 600:
                pieces.append(buf.strip())
                buf = ""
    random.Random(0).shuffle(pieces)
    root = tmp_path_factory.mktemp("mixed_wiki")
    corpus = root / "pieces.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in pieces))
    prepare(str(corpus), str(root / "shards"), 64, val_fraction=0.3, progress=False)
    return root / "shards"


def write_samples(path: Path, blocks: list[list[int]]) -> Path:
    tok = get_tokenizer()
    path.write_text("".join(json.dumps({"index": i, "tokens": b, "text": tok.decode(b), "nfe": 64}) + "\n"
                            for i, b in enumerate(blocks)))
    return path


def train_blocks(shards: Path, n: int) -> list[list[int]]:
    train = open_shards(str(shards), "train")
    return [train[i * len(train) // n].tolist() for i in range(n)]


def shuffled_words(block: list[int], rng: random.Random) -> list[int]:
    tok = get_tokenizer()
    words = tok.decode(block[1:-1]).split()
    rng.shuffle(words)
    return [tok.bos_id, *tok.encode(" ".join(words))[: len(block) - 2], tok.eos_id]


def mauve_of(samples: Path, shards: Path, cache: Path) -> dict:
    return evaluate(EvalConfig(samples=str(samples), reference=str(shards), metrics=["mauve"],
                               cache_dir=str(cache)))


def test_result_carries_the_pinned_protocol_and_cached_features_rerun_exactly(mixed_wiki, tmp_path):
    samples = write_samples(tmp_path / "s.jsonl", train_blocks(mixed_wiki, 40))
    (tmp_path / "s.jsonl.settings.json").write_text(json.dumps({"checkpoint": "runs/x", "sampler": "mdlm",
                                                                  "steps": 64, "seed": 3}))
    first = mauve_of(samples, mixed_wiki, tmp_path / "cache")
    again = mauve_of(samples, mixed_wiki, tmp_path / "cache")
    m = first["mauve"]
    assert m["features"]["samples"]["cache"] == "miss"
    assert again["mauve"]["features"]["samples"]["cache"] == again["mauve"]["features"]["references"]["cache"] == "hit"
    assert again["mauve"]["mauve"] == m["mauve"] and again["mauve"]["mauve_star"] == m["mauve_star"]
    params = m["parameters"]
    assert {k: params[k] for k in PROTOCOL} == PROTOCOL
    assert (params["num_buckets_used"], params["kmeans_explained_var"], params["kmeans_num_redo"],
            params["kmeans_max_iter"], params["mauve_scaling_factor"], params["seed"]) == (4, 0.9, 5, 500, 5, 25)
    assert m["reference"]["same_token_lengths"] and m["reference"]["count"] == m["n_p"] == m["n_q"] == 40
    assert m["featurizer"]["name"] == first["featurizer"] == "minilm"
    assert (first["checkpoint"], first["sampler"], first["T"], first["seed"], first["mean_nfe"], first["count"]) \
        == ("runs/x", "mdlm", 64, 3, 64.0, 40)
    assert first["wall_time_s"] > 0


@pytest.mark.slow
def test_held_out_wikipedia_scores_high(mixed_wiki, tmp_path):
    samples = write_samples(tmp_path / "real.jsonl", train_blocks(mixed_wiki, 200))
    assert mauve_of(samples, mixed_wiki, tmp_path / "cache")["mauve"]["mauve"] >= 0.9


@pytest.mark.slow
def test_shuffled_words_score_low(mixed_wiki, tmp_path):
    rng = random.Random(1)
    blocks = [shuffled_words(b, rng) for b in train_blocks(mixed_wiki, 200)]
    samples = write_samples(tmp_path / "shuffled.jsonl", blocks)
    assert mauve_of(samples, mixed_wiki, tmp_path / "cache")["mauve"]["mauve"] <= 0.2


def test_minilm_features_are_the_sentence_embedding_plus_an_order_contrast():
    from dsl_scale.evaluation.features import build_featurizer

    texts = ["the river flows north through the old city", "city flows north old river the the through",
             "a b c"]  # the second and third are already in sorted word order
    order_aware, mean_only = build_featurizer("minilm"), build_featurizer("minilm-mean")
    both, sentence = order_aware(texts), mean_only(texts)
    assert both.shape == (3, 768) and sentence.shape == (3, 384)
    assert np.allclose(both[:, :384], sentence, atol=1e-6)
    contrast = np.linalg.norm(both[:, 384:], axis=1)
    assert contrast[0] > 0.1 and contrast[1] == contrast[2] == 0.0
    assert order_aware.identity()["name"] == "minilm" and mean_only.identity()["name"] == "minilm-mean"
