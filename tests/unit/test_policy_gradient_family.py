"""REINFORCE++, DAPO's pieces, GSPO and the Dr. GRPO preset: exact numbers on tiny tensors, edge
cases, agreement with TRL's own loss code on the same tensors, and the spec's refusals."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from trainer.algorithms import build_algorithm
from trainer.algorithms.advantages import overlong_penalty, reinforce_pp_advantages, tied_groups
from trainer.algorithms.losses import aggregate, clipped_policy_loss, gspo_policy_loss
from trainer.spec import SpecError, parse_spec

# ── REINFORCE++ ─────────────────────────────────────────────────────────────────────────────────


def test_reinforce_pp_whitens_over_the_whole_batch():
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # mean 0.25, unbiased std sqrt(((0.75)^2 + 3 * 0.25^2) / 3) = 0.5
    expected = torch.tensor([[1.5, -0.5], [-0.5, -0.5]])
    torch.testing.assert_close(reinforce_pp_advantages(r), expected, atol=1e-6, rtol=0)


def test_reinforce_pp_baseline_centres_groups_first_and_tied_groups_stay_zero():
    r = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    # group-centred: [[0.5, -0.5], [0, 0]]; batch mean 0, unbiased std sqrt(0.5 / 3)
    std = math.sqrt(0.5 / 3)
    expected = torch.tensor([[0.5 / std, -0.5 / std], [0.0, 0.0]])
    torch.testing.assert_close(reinforce_pp_advantages(r, baseline=True), expected, atol=1e-5, rtol=0)


def test_reinforce_pp_failed_samples_left_out_and_degenerate_batches_are_zero():
    r = torch.tensor([[1.0, 5.0], [0.0, 0.0]])
    valid = torch.tensor([[True, False], [True, True]])
    # valid rewards 1, 0, 0: mean 1/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3)
    std = math.sqrt(1 / 3)
    expected = torch.tensor([[(2 / 3) / std, 0.0], [(-1 / 3) / std, (-1 / 3) / std]])
    torch.testing.assert_close(reinforce_pp_advantages(r, valid), expected, atol=1e-5, rtol=0)
    assert reinforce_pp_advantages(torch.tensor([[3.0]])).tolist() == [[0.0]]  # one sample: no baseline
    assert reinforce_pp_advantages(torch.full((2, 2), 1.0)).abs().max() == 0  # all tied: all zero


# ── DAPO ────────────────────────────────────────────────────────────────────────────────────────


def test_overlong_penalty_is_linear_over_the_buffer():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    torch.testing.assert_close(overlong_penalty(lengths, max_tokens=16, buffer=4, factor=1.0),
                               torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    assert overlong_penalty(lengths, 16, 0).abs().max() == 0  # buffer 0: off


def test_tied_groups_ignore_failed_samples():
    r = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 9.0, 1.0], [2.0, 0.0, 0.0]])
    valid = torch.tensor([[True] * 3, [True] * 3, [True, False, True], [True, False, False]])
    assert tied_groups(r, valid).tolist() == [True, False, True, True]  # the last has one valid sample


def test_single_token_completion_and_fully_masked_row():
    logprobs = torch.tensor([[math.log(1.5), 0.0], [0.0, 0.0]])
    old = torch.zeros(2, 2)
    mask = torch.tensor([[True, False], [False, False]])
    loss, _ = clipped_policy_loss(logprobs, old, torch.tensor([1.0, 1.0]), 0.2, 0.28)
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(-1.28)
    g_loss, _ = gspo_policy_loss(logprobs, old, torch.tensor([1.0, 1.0]), mask, 0.2, 0.28)
    assert g_loss[0].tolist() == pytest.approx([-1.28, -1.28]) and g_loss[1].tolist() == pytest.approx([-1.0, -1.0])
    assert aggregate(g_loss, mask, "sequence_mean").item() == pytest.approx(-1.28 / 2)


# ── GSPO ────────────────────────────────────────────────────────────────────────────────────────


def test_gspo_clips_the_geometric_mean_of_the_token_ratios():
    logprobs = torch.tensor([[math.log(2.0), math.log(0.5), 0.0], [math.log(1.21), math.log(1.0), 0.0]])
    old = torch.zeros_like(logprobs)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    loss, clipped = gspo_policy_loss(logprobs, old, torch.tensor([1.0, 1.0]), mask, 0.05, 0.05)
    # row 0: sqrt(2 * 0.5) = 1 → -1, unclipped.  row 1: sqrt(1.21) = 1.1 → clipped to 1.05.
    assert loss[:, 0].tolist() == pytest.approx([-1.0, -1.05])
    assert clipped[:, 0].tolist() == [False, True]


def test_gspo_gradient_is_the_sequence_ratio_times_the_mean_token_gradient():
    logprobs = torch.tensor([[math.log(1.1), math.log(0.9)]], requires_grad=True)
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, _ = gspo_policy_loss(logprobs, old, torch.tensor([2.0]), mask, 0.5, 0.5)
    aggregate(loss, mask, "sequence_mean").backward()
    s = math.sqrt(1.1 * 0.9)
    assert logprobs.grad.tolist()[0] == pytest.approx([-2.0 * s / 2, -2.0 * s / 2])


# ── agreement with TRL's GRPOTrainer loss on the same tensors ───────────────────────────────────


def trl_loss(loss_type: str, level: str, logprobs, old, advantages, mask, eps_low, eps_high, max_len: int):
    """TRL's `GRPOTrainer._compute_loss`, run on given tensors (the model call returns them)."""
    from trl import GRPOTrainer

    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, torch.zeros_like(logprobs), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=0.0,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False, aux_loss_enabled=False,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, model=SimpleNamespace(training=True), _entropy_bonus_enabled=False,
        accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x, num_processes=1,
                                    reduce=lambda x, reduction="sum": x, sync_gradients=True),
        _metrics=defaultdict(lambda: defaultdict(list)), _step=0)
    trainer.args.steps_per_generation = 1
    inputs = {"prompt_ids": torch.zeros(logprobs.shape[0], 1, dtype=torch.long),
              "prompt_mask": torch.ones(logprobs.shape[0], 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(trainer, None, inputs)


CASES = [  # (TRL loss type, importance level, our algorithm spec)
    ("grpo", "token", {"type": "grpo", "loss_agg": "sequence_mean", "clip_eps_high": 0.28}),
    ("dapo", "token", {"type": "dapo"}),
    ("dr_grpo", "token", {"type": "dr_grpo", "loss_constant": 4}),
    ("grpo", "sequence", {"type": "gspo", "clip_eps_low": 0.05, "clip_eps_high": 0.08}),
]


@pytest.mark.parametrize(("loss_type", "level", "algorithm"), CASES, ids=[c[2]["type"] for c in CASES])
def test_losses_agree_with_trl(loss_type, level, algorithm, tiny_model):
    spec = parse_spec({"model": {"path": str(tiny_model)}, "rewards": [{"name": "regex", "config": {"pattern": "x"}}],
                       "algorithm": algorithm, "rollout": {"max_new_tokens": 4}})
    algo = spec.algorithm
    torch.manual_seed(0)
    old = -torch.rand(3, 4) - 0.5
    logprobs = old + 0.3 * torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5, 2.0])
    ours, _ = build_algorithm(algo, 4).policy_loss(logprobs, old, adv, mask)
    ours = aggregate(ours, mask, algo.loss_agg, constant=algo.loss_constant or 4)
    theirs = trl_loss(loss_type, level, logprobs, old, adv, mask, algo.clip_eps_low, algo.clip_eps_high, 4)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


# ── the spec ────────────────────────────────────────────────────────────────────────────────────


def spec_with(tiny_model, algorithm: dict):
    return parse_spec({"model": {"path": str(tiny_model)}, "rewards": [{"name": "regex", "config": {"pattern": "x"}}],
                       "algorithm": algorithm, "rollout": {"prompts_per_step": 4}, "learner": {"micro_batch": 2}})


def test_presets_and_defaults(tiny_model):
    dr = spec_with(tiny_model, {"type": "dr_grpo"}).algorithm
    assert (dr.scale_std, dr.loss_agg) == (False, "constant")
    dapo = spec_with(tiny_model, {"type": "dapo"}).algorithm
    assert (dapo.clip_eps_high, dapo.loss_agg, dapo.dynamic_sampling, dapo.filter_truncated) == (0.28, "token_mean",
                                                                                             True, True)
    gspo = spec_with(tiny_model, {"type": "gspo"}).algorithm
    assert (gspo.clip_eps_low, gspo.clip_eps_high, gspo.loss_agg) == (3e-4, 4e-4, "sequence_mean")
    assert spec_with(tiny_model, {"type": "reinforce_pp", "group_size": 1}).algorithm.group_size == 1
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    valid = torch.ones_like(rewards, dtype=torch.bool)
    torch.testing.assert_close(build_algorithm(dr, 16).advantages(rewards, valid), torch.tensor([[0.5, -0.5], [0.0, 0.0]]))


@pytest.mark.parametrize(("algorithm", "field", "words"), [
    ({"type": "grpo", "group_size": 1}, "algorithm.group_size", "greater than or equal to 2"),
    ({"type": "dr_grpo", "scale_std": True}, "algorithm.scale_std", "False"),
    ({"type": "dapo", "loss_agg": "sequence_mean"}, "algorithm.loss_agg", "token_mean"),
    ({"type": "gspo", "dynamic_sampling": True}, "algorithm.dynamic_sampling", "unknown field"),
    ({"type": "rloo", "baseline": True}, "algorithm.baseline", "unknown field"),
    ({"type": "reinforce_pp", "group_size": 1, "baseline": True}, "algorithm.group_size", "group-mean baseline"),
    ({"type": "ppo_plus"}, "algorithm", "grpo"),
])
def test_wrong_knobs_and_impossible_values_are_refused_by_field(tiny_model, algorithm, field, words):
    with pytest.raises(SpecError) as err:
        spec_with(tiny_model, algorithm)
    rows = [e for e in err.value.errors if e["field"].startswith(field)]
    assert rows and words in rows[0]["message"], err.value.errors


def test_loss_masks_drop_failed_and_optionally_truncated_samples():
    from environments import Task
    from trainer.driver.learn import loss_masks
    from trainer.types import Completion, Sample

    task = Task("t", [{"role": "user", "content": "q"}])
    samples = [Sample(task, 0, [1], Completion([5, 6], [0.0, 0.0], "ab", truncated=True), 0),
               Sample(task, 0, [1], Completion([5, 2], [0.0, 0.0], "a", truncated=False), 0),
               Sample(task, 0, [1], Completion([5, 6, 7], [0.0] * 3, "abc", False, mask=[True, False, True]), 0)]
    assert loss_masks(samples, [False, False, False], drop_truncated=False) == [[True, True], [True, True],
                                                                                [True, False, True]]
    assert loss_masks(samples, [False, True, False], drop_truncated=True) == [[False, False], [False, False],
                                                                              [True, False, True]]
