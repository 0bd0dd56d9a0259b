"""The outcome model's loss and its held-out measures: pure functions of scores and labels.

The outcome model (`algorithm.type = "outcome_model"`) is a binary classifier of conversations:
the probability that a trace's outcome label is one of the positive values (resolved, accepted).
It is trained with the logistic loss and judged on held-out traces by how well it ranks (AUC) and
how well its probabilities match the observed rates (calibration), because a reward model's
scores are used as probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def binary_loss(logits_B: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    """Per-sequence logistic loss, -[y log sigma(z) + (1 - y) log(1 - sigma(z))], as [B]."""
    return F.binary_cross_entropy_with_logits(logits_B, labels_B.to(logits_B.dtype), reduction="none")


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic over n_pos × n_neg)."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        raise ValueError(f"AUC needs both classes; got {pos} positive and {neg} negative")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, i = 0.0, 0
    while i < len(order):                         # average ranks (1-based) over runs of tied scores
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        rank_sum += mean_rank * sum(1 for k in order[i:j + 1] if labels[k])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def calibration(probs: Sequence[float], labels: Sequence[bool], bins: int = 10) -> dict:
    """Reliability over `bins` equal-width probability bins: each non-empty bin's count, mean
    predicted probability and observed positive rate; the expected calibration error (the
    count-weighted mean of |predicted - observed|) and the Brier score (mean squared error)."""
    if not probs:
        raise ValueError("calibration needs at least one prediction")
    table = []
    for b in range(bins):
        members = [i for i, p in enumerate(probs) if min(int(p * bins), bins - 1) == b]
        if members:
            predicted = sum(probs[i] for i in members) / len(members)
            observed = sum(1 for i in members if labels[i]) / len(members)
            table.append({"low": b / bins, "high": (b + 1) / bins, "count": len(members),
                          "predicted": predicted, "observed": observed})
    n = len(probs)
    ece = sum(row["count"] * abs(row["predicted"] - row["observed"]) for row in table) / n
    brier = sum((p - float(y)) ** 2 for p, y in zip(probs, labels, strict=True)) / n
    return {"bins": table, "ece": ece, "brier": brier}
