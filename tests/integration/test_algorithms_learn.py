"""Every policy-gradient algorithm through the real stack (local Ray, 2 rollout workers, 2
DeepSpeed ranks) learns the trainer's learning-test task: the share of digits in the answer."""

import statistics

import pytest

from tests.conftest import job_payload
from trainer.loop import train
from trainer.spec import parse_spec

pytestmark = pytest.mark.slow

STEPS = 25
# As in test_grpo_learning: a random policy writes ~10-20 % digits and spaces; a loop that does
# not learn stays within noise (±0.05) of where it started.
MIN_GAIN = 0.2

ALGORITHMS = {
    "dr_grpo": {"type": "dr_grpo"},
    "rloo": {"type": "rloo", "clip_eps_high": 0.28},
    "reinforce_pp": {"type": "reinforce_pp", "group_size": 8},
    "reinforce_pp_baseline": {"type": "reinforce_pp", "group_size": 8, "baseline": True},
    # Nearly every completion of the random model runs to the token limit, so DAPO's truncation
    # filter would leave nothing to learn from; its overlong shaping covers that end instead.
    "dapo": {"type": "dapo", "filter_truncated": False, "overlong_buffer": 4, "overlong_penalty": 0.2},
    "gspo": {"type": "gspo"},
    "ppo": {"type": "ppo", "group_size": 8, "critic_lr": 3e-3, "lam": 0.95, "ppo_epochs": 2, "mini_batches": 2},
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_algorithm_learns(name, tiny_model, tmp_path, ray_cluster):
    learner = {"ranks": 2, "zero_stage": 2, "lr": 3e-3, "micro_batch": 8 if name != "ppo" else 4,
               "num_cpus": 0.4 if name != "ppo" else 0.25}  # PPO places 2 critic ranks as well
    spec = parse_spec(job_payload(tiny_model, tmp_path, name=name, algorithm=ALGORITHMS[name], learner=learner,
                                  schedule={"steps": STEPS, "checkpoint_interval": 0, "eval_before_after": False}))
    result = train(spec, echo=lambda _: None)
    rewards = [m["reward/digit_share"] for m in result.history]
    first, last = statistics.fmean(rewards[:5]), statistics.fmean(rewards[-5:])
    assert last - first > MIN_GAIN, f"{name}: reward did not rise enough: first 5 {first:.3f}, last 5 {last:.3f}"
    if name == "ppo":  # the critic learns to predict the return
        value_loss = [m["value_loss"] for m in result.history]
        assert statistics.fmean(value_loss[-5:]) < 0.5 * statistics.fmean(value_loss[:5]), value_loss
    if name == "dapo":
        assert all(m["dynamic_sampling/rounds"] >= 1 for m in result.history)
        assert all(m["dynamic_sampling/informative_groups"] + m["dynamic_sampling/tied_groups_used"] >= 4
                   for m in result.history)
