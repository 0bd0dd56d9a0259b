"""PPO's pure pieces on tiny tensors: per-token rewards, GAE, whitening, the clipped value loss,
the adaptive KL coefficient; and the spec's PPO checks."""

import pytest
import torch

from trainer.algorithms.advantages import whiten
from trainer.algorithms.losses import clipped_policy_loss
from trainer.algorithms.ppo import AdaptiveKL, clipped_value_loss, gae, token_rewards
from trainer.spec import SpecError, parse_spec


def test_outcome_lands_on_the_last_policy_token_and_kl_on_every_one():
    mask = torch.tensor([[True, True, False], [True, False, True], [False, False, False]])
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 9.0, 0.5], [1.0, 1.0, 1.0]])
    r = token_rewards(torch.tensor([1.0, -1.0, 5.0]), mask, kl, beta=0.5)
    expected = torch.tensor([[-0.05, 1.0 - 0.1, 0.0], [-0.15, 0.0, -1.0 - 0.25], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(r, expected)  # a row with no policy token gets nothing


def test_gae_exact_numbers():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # delta = [0 + 0.6 - 0.5, 0 + 0.7 - 0.6, 1 + 0 - 0.7] = [0.1, 0.1, 0.3]
    # A_2 = 0.3; A_1 = 0.1 + 0.5 * 0.3 = 0.25; A_0 = 0.1 + 0.5 * 0.25 = 0.225
    torch.testing.assert_close(adv, torch.tensor([[0.225, 0.25, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0]]))
    # lambda = 1 is the Monte-Carlo return minus the value; lambda = 0 is one-step TD.
    mc, _ = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(mc, torch.tensor([[0.5, 0.4, 0.3]]))
    td, _ = gae(rewards, values, mask, 1.0, 0.0)
    torch.testing.assert_close(td, torch.tensor([[0.1, 0.1, 0.3]]))


def test_gae_skips_tokens_the_environment_wrote():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 99.0, 0.6, 0.7]])
    mask = torch.tensor([[True, False, True, True]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # the masked position neither contributes its value nor breaks the chain
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, 0.4, 0.3]]))
    assert ret[0, 1] == 0


def test_gae_discount():
    adv, _ = gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 0.9, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.9, 1.0]]))


def test_whiten_over_masked_entries():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    out = whiten(x, torch.tensor([[True, True, False]]))
    std = (2.0 ** 0.5)  # unbiased std of [1, 3]
    torch.testing.assert_close(out, torch.tensor([[-1 / std, 1 / std, 0.0]]), atol=1e-6, rtol=0)
    assert whiten(x, torch.tensor([[True, False, False]])).abs().max() == 0


def test_clipped_value_loss_takes_the_pessimistic_branch():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.1, -0.5]])
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipped = clipped_value_loss(values, old, returns, clip=0.2)
    # v=0.5: clipped to 0.2 → max((0.5)^2, (0.8)^2) = 0.64 → 0.32 (clipped branch)
    # v=0.1: inside the clip → 0.5 * 0.81 = 0.405
    # v=-0.5, return 0: clipped to -0.2 → max(0.25, 0.04) = 0.25 → 0.125 (unclipped)
    torch.testing.assert_close(loss, torch.tensor([[0.32, 0.405, 0.125]]))
    assert clipped.tolist() == [[True, False, False]]


def test_policy_loss_takes_per_token_advantages():
    logprobs = torch.log(torch.tensor([[1.5, 1.0]]))
    loss, _ = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -2.0]]), 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 2.0]]))


def test_adaptive_kl_moves_towards_the_target_by_at_most_20_percent():
    ctl = AdaptiveKL(beta=0.1, target=0.05, horizon=100)
    assert ctl.update(kl=0.5, n_samples=100) == pytest.approx(0.12)  # error clipped to +0.2
    assert ctl.update(kl=0.05, n_samples=100) == pytest.approx(0.12)  # on target: unchanged
    assert ctl.update(kl=0.04, n_samples=50) == pytest.approx(0.12 * (1 - 0.2 * 0.5))


def ppo_spec(tiny_model, **algorithm):
    return parse_spec({"model": {"path": str(tiny_model)}, "rewards": [{"name": "regex", "config": {"pattern": "x"}}],
                       "algorithm": {"type": "ppo", **algorithm}, "rollout": {"prompts_per_step": 8},
                       "learner": {"ranks": 2, "micro_batch": 2}})


def test_ppo_spec_defaults_and_refusals(tiny_model):
    algo = ppo_spec(tiny_model).algorithm
    assert (algo.group_size, algo.gamma, algo.lam, algo.ppo_epochs, algo.mini_batches) == (1, 1.0, 0.95, 2, 2)
    for knobs, field, words in [({"lam": 1.5}, "algorithm.lam", "less than or equal to 1"),
                                ({"gamma": -0.1}, "algorithm.gamma", "greater than or equal to 0"),
                                ({"scale_std": False}, "algorithm.scale_std", "unknown field"),
                                ({"mini_batches": 3}, "learner.micro_batch", "3 mini-batches")]:
        with pytest.raises(SpecError) as err:
            ppo_spec(tiny_model, **knobs)
        row = next(e for e in err.value.errors if e["field"] == field)
        assert words in row["message"], err.value.errors
