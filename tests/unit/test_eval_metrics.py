"""Evaluation metrics that need no model: entropy, distinct-n, gen-PPL bookkeeping, config, plots."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dsl_scale.evaluation import gen_ppl
from dsl_scale.evaluation.config import EvalConfig, validate_eval_config
from dsl_scale.evaluation.diversity import distinct_n, diversity, unigram_entropy
from dsl_scale.evaluation.inputs import read_samples, reference_indices
from dsl_scale.tokenizer import get_tokenizer

EOS = 50256


def test_entropy_and_distinct_n_equal_hand_computations():
    a, b = [1, 1, 2, 3], [5, 5, 5, 5]
    # a: frequencies 1/2, 1/4, 1/4 → H = ½ ln 2 + 2·¼ ln 4 = 1.5 ln 2; b: one token → 0
    assert unigram_entropy(a) == pytest.approx(1.5 * math.log(2))
    assert unigram_entropy(b) == 0.0
    result = diversity([a, b])
    assert result["entropy"] == pytest.approx(0.75 * math.log(2))
    # unigrams {1,2,3,5} of 8; bigrams (1,1)(1,2)(2,3)(5,5)x3 → 4 distinct of 6; trigrams 3 of 4; 4-grams 2 of 2
    assert result["distinct_1"] == pytest.approx(4 / 8)
    assert result["distinct_2"] == pytest.approx(4 / 6)
    assert result["distinct_3"] == pytest.approx(3 / 4)
    assert result["distinct_4"] == 1.0
    assert distinct_n([[1]], 2) == 0.0


def test_only_the_first_eos_counts_and_leading_bos_is_framing():
    assert gen_ppl.cut_at_first_eos([EOS, 7, 8, EOS, 9, EOS], EOS, EOS) == ([7, 8, EOS], True)
    assert gen_ppl.cut_at_first_eos([7, 8, 9], EOS, EOS) == ([7, 8, 9], False)
    assert gen_ppl.chunks([1, 2, 3, 4, 5], context=3, bos_id=0) == [[0, 1, 2], [0, 3, 4], [0, 5]]


class UniformScorer:
    """Equal logits everywhere: every scored token costs exactly ln V."""

    context, bos_id, eos_id, same_vocab, vocab = 4, EOS, EOS, True, 50258

    def identity(self):
        return {"kind": "uniform"}

    def encode(self, text):
        raise AssertionError("same vocabulary: no re-tokenisation expected")

    def logits(self, ids, mask):
        return torch.zeros(*ids.shape, self.vocab)


def test_gen_ppl_of_a_uniform_scorer_is_its_vocabulary_size():
    tok = get_tokenizer()
    samples = [[EOS, 10, 11, 12, 13, 14, EOS, 99, 98], [20, 21]]
    result = gen_ppl.generative_perplexity(samples, tok, UniformScorer(), batch_size=2)
    assert result["scored_tokens"] == 6 + 2  # 5 tokens + the first EOS; then 2
    assert result["gen_ppl"] == pytest.approx(50258, rel=1e-6)  # fp32 log-softmax


class PeakedScorer(UniformScorer):
    """Logit 0 everywhere but `peak` for id 7: id 7 costs ln(V − 1 + e^peak) − peak, any other id
    ln(V − 1 + e^peak). A small V keeps fp32's log-softmax exact to 1e-6."""

    peak, vocab = 3.0, 64

    def logits(self, ids, mask):
        out = torch.zeros(*ids.shape, self.vocab)
        out[..., 7] = self.peak
        return out


def test_gen_ppl_bootstrap_resamples_samples_not_tokens():
    tok, scorer = get_tokenizer(), PeakedScorer()
    log_z = math.log(scorer.vocab - 1 + math.exp(scorer.peak))
    easy, hard = log_z - scorer.peak, log_z
    # per sample (summed NLL, tokens); a sample longer than the context is scored in several chunks
    samples = [[7] * 9, [20, 21], [7, 7, 30], []]
    per_sample = [(9 * easy, 9), (2 * hard, 2), (2 * easy + hard, 3), (0.0, 0)]
    nll, count = gen_ppl.sample_nll(samples, tok, scorer, batch_size=3)
    assert count == [c for _, c in per_sample] and nll == pytest.approx([n for n, _ in per_sample], rel=1e-5)
    result = gen_ppl.generative_perplexity(samples, tok, scorer, batch_size=3, resamples=400, seed=3)
    assert result["gen_ppl"] == pytest.approx(math.exp(sum(nll) / sum(count)), rel=1e-6)
    # the reference rule: the 2.5 / 97.5 percentiles of exp(Σ NLL / Σ tokens) over resampled samples
    import numpy as np

    picks = np.random.default_rng(3).integers(0, 4, size=(400, 4))
    n, c = np.array(nll), np.array(count)
    ppl = np.exp(n[picks].sum(1) / np.maximum(c[picks].sum(1), 1))
    assert result["ci95"] == pytest.approx([np.percentile(ppl, 2.5), np.percentile(ppl, 97.5)])
    assert result["ci95"][0] < result["gen_ppl"] < result["ci95"][1]
    assert gen_ppl.generative_perplexity(samples, tok, scorer, resamples=0)["ci95"] is None


def test_retokenisation_keeps_the_text_and_maps_eos():
    tok = get_tokenizer()

    class Other(UniformScorer):
        same_vocab, eos_id = False, 2

        def encode(self, text):
            return [ord(c) for c in text]

    ids = gen_ppl.scorer_ids([EOS, *tok.encode("Hi there"), EOS, *tok.encode("ignored")], tok, Other())
    assert ids == [ord(c) for c in "Hi there"] + [2]


def test_samples_file_and_sidecar(tmp_path):
    tok = get_tokenizer()
    file = tmp_path / "s.jsonl"
    file.write_text(json.dumps({"index": 1, "tokens": [EOS, 40, EOS], "text": "x", "nfe": 3}) + "\n"
                    + json.dumps({"index": 0, "text": "Hello world", "nfe": 5}) + "\n")
    (tmp_path / "s.jsonl.settings.json").write_text(json.dumps({"sampler": "mdlm", "steps": 8}))
    samples = read_samples(file, tok)
    assert samples.tokens == [tok.encode("Hello world"), [EOS, 40, EOS]]
    assert samples.texts[1] == tok.decode([40]) and samples.nfe == [5.0, 3.0]
    assert samples.settings == {"sampler": "mdlm", "steps": 8}


def test_reference_blocks_are_spread_over_the_split():
    assert reference_indices(10, 4) == [0, 2, 5, 7]
    with pytest.raises(ValueError, match="only 3 blocks"):
        reference_indices(3, 4)


@pytest.mark.parametrize("overrides,message", [
    ({"metrics": ["bleu"]}, "each must be one of"),
    ({"metrics": ["mauve"], "samples": "s.jsonl"}, "reference=SHARD_DIR"),
    ({"metrics": ["gen_ppl"], "samples": "s.jsonl"}, "scorer=PATH"),
    ({"metrics": ["nelbo"]}, "checkpoint=RUN_DIR"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_eval_config(EvalConfig(**overrides))


def test_plot_results_draws_mauve_and_gen_ppl_against_nfe(tmp_path):
    from dsl_scale.cli.plot_results import main

    files = []
    for t, m, p in ((16, 0.1, 90.0), (64, 0.3, 60.0), (256, 0.5, 40.0)):
        f = tmp_path / f"r{t}.json"
        f.write_text(json.dumps({"checkpoint": "runs/x", "sampler": "mdlm", "T": t, "mean_nfe": t * 0.9,
                                 "mauve": {"mauve": m}, "gen_ppl": {"gen_ppl": p}}))
        files.append(str(f))
    out = tmp_path / "plot.png"
    main([*files, "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
