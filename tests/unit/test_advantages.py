import math

import pytest
import torch

from trainer.algorithms import ALGORITHMS, build_algorithm
from trainer.algorithms.advantages import grpo_advantages, rloo_advantages
from trainer.spec import POLICY_TAGS
from trainer.spec.algorithms import GRPOSpec, RLOOSpec

STD = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1] and of [1, 0, 1]


def test_grpo_scales_by_unbiased_group_std():
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    a = 0.5 / (STD + 1e-4)
    assert adv.flatten().tolist() == pytest.approx([a, -a, -a, a], abs=1e-6)


def test_grpo_without_std_scaling_is_centred_reward():
    adv = grpo_advantages(torch.tensor([[3.0, 1.0, 2.0, 2.0]]), scale_std=False)
    assert adv.flatten().tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])


def test_all_equal_group_gives_zero_advantage():
    adv = grpo_advantages(torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, 2.0]]))
    assert adv[0].tolist() == [0.0, 0.0, 0.0]
    assert adv[1].tolist() == pytest.approx([-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4)], abs=1e-6)


def test_grpo_failed_samples_are_left_out_of_group_statistics():
    valid = torch.tensor([[True, True, False, True]])
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), valid)
    # valid rewards 1, 0, 1: mean 2/3, unbiased std sqrt(1/3)
    s = STD + 1e-4
    assert adv.flatten().tolist() == pytest.approx([(1 / 3) / s, (-2 / 3) / s, 0.0, (1 / 3) / s], abs=1e-6)


def test_group_with_one_valid_sample_has_no_baseline():
    valid = torch.tensor([[True, False, False]])
    assert grpo_advantages(torch.tensor([[5.0, 1.0, 0.0]]), valid).tolist() == [[0.0, 0.0, 0.0]]
    assert rloo_advantages(torch.tensor([[5.0, 1.0, 0.0]]), valid).tolist() == [[0.0, 0.0, 0.0]]


def test_rloo_leave_one_out_baseline():
    adv = rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [4.0, 1.0, 1.0, 2.0]]))
    assert adv[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # 4 - (1+1+2)/3 = 8/3; 1 - (4+1+2)/3 = -4/3; 2 - (4+1+1)/3 = 0
    assert adv[1].tolist() == pytest.approx([8 / 3, -4 / 3, -4 / 3, 0.0])


def test_rloo_with_failed_sample():
    valid = torch.tensor([[True, True, True, False]])
    adv = rloo_advantages(torch.tensor([[3.0, 1.0, 2.0, 100.0]]), valid)
    # 3 - 1.5, 1 - 2.5, 2 - 2, and the failed one 0
    assert adv.flatten().tolist() == pytest.approx([1.5, -1.5, 0.0, 0.0])


def test_the_algorithm_object_follows_its_spec():
    r = torch.tensor([[1.0, 0.0]])
    valid = torch.ones_like(r, dtype=torch.bool)
    assert build_algorithm(GRPOSpec(scale_std=False), 16).advantages(r, valid).tolist() == [[0.5, -0.5]]
    assert build_algorithm(RLOOSpec(), 16).advantages(r, valid).tolist() == [[1.0, -1.0]]


def test_every_spec_variant_has_an_algorithm_object():
    assert set(ALGORITHMS) == POLICY_TAGS  # every algorithm but the outcome model, which trains no policy
