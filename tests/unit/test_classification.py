"""The outcome model's loss and held-out measures, with numbers worked by hand."""

import math

import pytest
import torch

from trainer.algorithms.classification import binary_loss, calibration, roc_auc


def test_binary_loss_is_the_logistic_loss_per_sequence():
    loss = binary_loss(torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0]))
    expected = [math.log(2), math.log(1 + math.exp(2)), math.log(1 + math.exp(-1))]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)


def test_auc_counts_the_pairs_a_positive_wins_and_half_the_ties():
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs won (0.9>0.4, 0.9>0.1, 0.4>0.1) + half a tie = 3.5 / 4
    assert roc_auc([0.9, 0.4, 0.4, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert roc_auc([0.1, 0.2, 0.3], [True, False, False]) == 0.0
    assert roc_auc([0.5] * 4, [True, False, True, False]) == 0.5


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes; got 2 positive and 0 negative"):
        roc_auc([0.1, 0.2], [True, True])


def test_calibration_bins_ece_and_brier():
    probs, labels = [0.05, 0.15, 0.85, 0.95, 0.9], [False, True, True, True, False]
    out = calibration(probs, labels, bins=10)
    assert [(b["low"], b["count"]) for b in out["bins"]] == [(0.0, 1), (0.1, 1), (0.8, 1), (0.9, 2)]
    top = out["bins"][-1]
    assert top["predicted"] == pytest.approx(0.925) and top["observed"] == 0.5
    # ECE: (|0.05-0| + |0.15-1| + |0.85-1| + 2 |0.925-0.5|) / 5
    assert out["ece"] == pytest.approx((0.05 + 0.85 + 0.15 + 2 * 0.425) / 5)
    assert out["brier"] == pytest.approx((0.05**2 + 0.85**2 + 0.15**2 + 0.05**2 + 0.9**2) / 5)
    assert calibration([1.0], [True])["bins"][0]["low"] == 0.9  # p = 1 falls in the last bin
