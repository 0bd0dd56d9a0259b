import math

import pytest
import torch

from trainer.algorithms.losses import (
    aggregate,
    clipped_policy_loss,
    entropy_from_logits,
    k3_kl,
    masked_mean,
    token_logprobs,
    token_logprobs_and_entropy,
)


def test_clipped_loss_each_case_of_the_clip():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.0]])
    logprobs = ratios.log()
    old = torch.zeros_like(logprobs)
    # one sequence per column so each token gets its own advantage
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    loss, clipped = clipped_policy_loss(logprobs.T, old.T, adv, eps_low=0.2, eps_high=0.28)
    # A>0, ratio above 1+eps_high: clipped to 1.28.  A>0, ratio low: unclipped 0.5.
    # A<0, ratio below 1-eps_low: clipped to 0.8.   A<0, ratio high: unclipped 1.5.  ratio 1: -A.
    assert loss.squeeze(1).tolist() == pytest.approx([-1.28, -0.5, 0.8, 1.5, -2.0], abs=1e-6)
    assert clipped.squeeze(1).tolist() == [True, False, True, False, False]


def test_clipped_loss_gradient_vanishes_where_clipped():
    logprobs = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, _ = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2)
    loss.sum().backward()
    # d(-ratio*A)/dlogp = -ratio*A on the unclipped token, 0 on the clipped one
    assert logprobs.grad.flatten().tolist() == pytest.approx([0.0, -1.1], abs=1e-6)


def test_k3_kl_exact_and_zero_at_equal_policies():
    kl = k3_kl(torch.tensor([[math.log(0.5), -1.0]]), torch.tensor([[0.0, -1.0]]))
    assert kl.flatten().tolist() == pytest.approx([2 - math.log(2) - 1, 0.0], abs=1e-6)


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])


@pytest.mark.parametrize(("mode", "expected"), [
    ("token_mean", 7 / 3),           # (1 + 2 + 4) / 3 tokens
    ("sequence_mean", 2.75),         # ((1 + 2) / 2 + 4 / 1) / 2 sequences
    ("constant", 7 / (2 * 4)),       # sum / (2 sequences × constant 4)
])
def test_aggregate_modes(mode, expected):
    assert float(aggregate(VALUES, MASK, mode, constant=4)) == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "constant"])
def test_aggregate_over_shards_with_global_counts_sums_to_full_batch(mode):
    full = aggregate(VALUES, MASK, mode, constant=4)
    counts = dict(num_sequences=2, num_tokens=int(MASK.sum()), constant=4)
    parts = sum(aggregate(VALUES[i : i + 1], MASK[i : i + 1], mode, **counts) for i in range(2))
    assert float(parts) == pytest.approx(float(full))


def test_fully_masked_batch_aggregates_to_zero_not_nan():
    mask = torch.zeros_like(MASK)
    for mode in ("token_mean", "sequence_mean", "constant"):
        assert float(aggregate(VALUES, mask, mode, constant=4)) == 0.0


def test_constant_mode_needs_its_normaliser():
    with pytest.raises(ValueError, match="constant"):
        aggregate(VALUES, MASK, "constant")


def test_masked_mean_entropy_and_token_logprobs():
    assert float(masked_mean(VALUES, MASK)) == pytest.approx(7 / 3)
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).flatten().tolist() == pytest.approx([math.log(4)])
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probabilities 1/4, 3/4
    assert token_logprobs(logits, torch.tensor([[1]])).flatten().tolist() == pytest.approx([math.log(0.75)])


def test_logprobs_and_entropy_in_one_pass_match_the_separate_functions():
    logits = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]], requires_grad=True)
    tokens = torch.tensor([[1, 0]])
    logprobs, entropy = token_logprobs_and_entropy(logits, tokens)
    assert logprobs.flatten().tolist() == pytest.approx([math.log(0.75), math.log(0.5)])
    assert entropy.flatten().tolist() == pytest.approx(entropy_from_logits(logits).flatten().tolist())
    assert logprobs.requires_grad and not entropy.requires_grad
