import math

import pytest
import torch

from trainer.algorithms.grpo import GRPO
from trainer.algorithms.losses import (
    aggregate,
    clipped_policy_loss,
    entropy_from_logits,
    k3_kl,
    masked_mean,
    token_logprobs,
    token_logprobs_and_entropy,
    truncated_is_weight,
)
from trainer.spec.algorithms import GRPOSpec


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


def test_truncated_is_weight_is_the_capped_detached_ratio():
    learner = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.3)]], requires_grad=True)
    rollout = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.6)]])
    w = truncated_is_weight(learner, rollout, cap=2.0)
    assert w.flatten().tolist() == pytest.approx([1.0, 2.0, 0.5], abs=1e-6)  # 0.9/0.3 = 3 is capped at 2
    assert not w.requires_grad


def test_corrected_loss_without_tis_takes_the_ratio_against_the_rollout():
    algo = GRPO(GRPOSpec(tis_cap=None), max_new_tokens=4)
    logprobs = torch.tensor([[math.log(0.6)]], requires_grad=True)
    old, rollout, mask = torch.tensor([[math.log(0.6)]]), torch.tensor([[math.log(0.5)]]), torch.tensor([[True]])
    loss, clipped, weight = algo.corrected_loss(logprobs, old, rollout, torch.tensor([1.0]), mask)
    assert loss.item() == pytest.approx(-1.2, abs=1e-6)  # ratio 0.6/0.5, inside the clip
    assert not clipped.any() and weight.flatten().tolist() == [1.0]


def test_corrected_loss_with_tis_weights_the_on_policy_gradient():
    algo = GRPO(GRPOSpec(tis_cap=2.0), max_new_tokens=4)
    p_old = torch.tensor([[0.9, 0.4]])
    logprobs = p_old.log().clone().requires_grad_(True)
    rollout = torch.tensor([[0.3, 0.5]]).log()  # the rollout engine's view: ratios 3 (capped) and 0.8
    loss, clipped, weight = algo.corrected_loss(logprobs, p_old.log(), rollout, torch.tensor([1.0]),
                                                torch.tensor([[True, True]]))
    loss.sum().backward()
    # The ratio is against the learner's own old logprob (1 here), so the gradient is -A * w.
    assert logprobs.grad.flatten().tolist() == pytest.approx([-2.0, -0.8], abs=1e-5)
    assert weight.flatten().tolist() == pytest.approx([2.0, 0.8], abs=1e-6) and not clipped.any()


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
