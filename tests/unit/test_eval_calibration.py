"""The paper's analyses: expected calibration error and one-pass self-correction, on real tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsl_scale.evaluation.calibration import draft_calibration, expected_calibration_error, score_draft
from dsl_scale.evaluation.self_correction import corrupt, self_correction

V, MASK = 12, 11


def test_ece_exact_values():
    # Two confidence levels, accuracies set exactly: |0.6 − 0.6|·½ + |0.95 − 0.75|·½ = 0.1.
    confidence = np.array([0.6] * 20 + [0.95] * 20)
    correct = np.array([1] * 12 + [0] * 8 + [1] * 15 + [0] * 5)
    assert expected_calibration_error(confidence, correct, 10, "equal-width") == pytest.approx(0.1, abs=1e-12)
    assert expected_calibration_error(confidence, correct, 2, "equal-mass") == pytest.approx(0.1, abs=1e-12)
    # One level: any binning gives |0.7 − 0.9|.
    assert expected_calibration_error(np.full(50, 0.9), np.arange(50) < 35, 15) == pytest.approx(0.2, abs=1e-12)
    with pytest.raises(ValueError, match="binning"):
        expected_calibration_error(confidence, correct, 10, "quantile")


def _predictor(sharpen: float, n: int = 20000, seed: int = 0):
    """Logits whose softmax is the truth; labels drawn from it; the predictor reports softmax(sharpen·logits)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = 2.0 * torch.randn(n, 1, V - 1, generator=g, dtype=torch.float64, device="cpu")
    truth = torch.softmax(logits, dim=-1)
    labels = torch.multinomial(truth.view(n, -1), 1, generator=g).view(n, 1)
    model = torch.cat([sharpen * logits, torch.zeros(n, 1, 1, dtype=torch.float64, device="cpu")], dim=-1)
    draft = torch.full((n, 1), MASK, dtype=torch.long, device="cpu")
    confidence, correct = score_draft(model, draft, labels, MASK)["masked"]
    # The exact expected accuracy of each prediction: the truth's probability of the predicted argmax.
    return confidence, correct, truth.gather(-1, model[..., :-1].argmax(-1, keepdim=True)).view(-1).numpy()


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_an_overconfident_one_is_its_exact_gap():
    confidence, correct, _ = _predictor(1.0)
    calibrated = expected_calibration_error(confidence, correct, 10)
    assert calibrated < 0.015  # sampling noise only (≈ √(p(1−p)/2000) per bin)
    confidence, correct, p_right = _predictor(3.0)
    measured = expected_calibration_error(confidence, correct, 10)
    exact = expected_calibration_error(confidence, p_right, 10)  # accuracies replaced by their expectations
    assert exact > 0.1
    assert measured == pytest.approx(exact, abs=0.015)


def test_draft_calibration_runs_both_position_kinds():
    blocks = torch.randint(0, MASK, (6, 10), generator=torch.Generator(device="cpu").manual_seed(1), device="cpu")

    def oracle(ids):  # certain of the original everywhere: visible errors are then confidently "wrong"
        return 50.0 * torch.nn.functional.one_hot(blocks[: len(ids)], V).double()

    result = draft_calibration(oracle, blocks, MASK, seed=0, fill=0.5, bins=5, batch_size=6)
    assert result["masked"]["accuracy"] == 1.0 and result["masked"]["ece"] < 1e-9
    # Visible: original tokens get confidence 1 and are right, self-drawn ones are the original too
    # (the oracle's draws are its argmax), so visible accuracy is 1 and ECE ≈ 0.
    assert result["visible"]["accuracy"] == 1.0 and result["visible"]["ece"] < 1e-9
    assert result["visible"]["count"] + result["masked"]["count"] == blocks.numel()


def test_corruption_and_one_pass_repair():
    g = torch.Generator(device="cpu").manual_seed(0)
    blocks = torch.randint(0, MASK, (8, 22), generator=g, device="cpu")
    corrupted, chosen = corrupt(blocks, 0.1, V, MASK, g)
    assert (chosen.sum(1) == 2).all() and not chosen[:, [0, -1]].any()  # round(0.1·20) inner positions
    assert (corrupted[chosen] != blocks[chosen]).all() and (corrupted[~chosen] == blocks[~chosen]).all()
    assert (corrupted != MASK).all()

    def oracle(ids):
        return torch.nn.functional.one_hot(blocks[: len(ids)], V).float()

    def copy(ids):
        return torch.nn.functional.one_hot(ids, V).float()

    fixed = self_correction(oracle, blocks, V, MASK, rate=0.1, batch_size=8, resamples=100)
    assert (fixed["repaired"], fixed["broken"]) == (1.0, 0.0)
    copied = self_correction(copy, blocks, V, MASK, rate=0.1, batch_size=8, resamples=100)
    assert (copied["repaired"], copied["broken"]) == (0.0, 0.0)
