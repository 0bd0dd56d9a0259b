"""Failing reward modules inside a real job: recorded and counted per sample, excluded from the
update, and past the job's threshold the job stops with an error naming the module."""

import pytest

from tests.conftest import job_payload
from trainer.loop import RewardFailureError, train
from trainer.spec import parse_spec

pytestmark = pytest.mark.slow

GOOD = {"import_path": "tests.fixtures.trl_rewards:digit_share"}
RAISES = {"import_path": "tests.fixtures.trl_rewards:always_raises"}
HANGS = {"import_path": "tests.fixtures.trl_rewards:hangs", "timeout_s": 0.5}


def run(tiny_model, out_dir, rewards, threshold, steps=1):
    spec = parse_spec(job_payload(tiny_model, out_dir, rewards=rewards, reward_failure_threshold=threshold,
                                  schedule={"steps": steps, "checkpoint_interval": 0, "seed": 0}))
    return train(spec, echo=lambda _: None)


def test_failures_under_the_threshold_are_counted_and_masked(tiny_model, tmp_path, ray_cluster):
    result = run(tiny_model, tmp_path, [GOOD, RAISES, HANGS], threshold=1.0)
    m = result.history[0]
    assert m["reward_failures/always_raises"] == 32 and m["reward_failures/hangs"] == 32
    assert m["reward/failed"] == 32
    # every sample failed, so nothing is learned from them: zero advantage, zero loss
    assert m["advantage/abs_mean"] == 0.0 and m["loss"] == 0.0
    assert m["reward/digit_share"] > 0  # the healthy module still scored


def test_raising_module_past_threshold_stops_the_job(tiny_model, tmp_path, ray_cluster):
    with pytest.raises(RewardFailureError) as err:
        run(tiny_model, tmp_path, [GOOD, RAISES], threshold=0.25, steps=3)
    message = str(err.value)
    assert "'always_raises' failed on 32/32 samples" in message
    assert "RuntimeError: grader backend unavailable" in message


def test_hanging_module_past_threshold_stops_the_job(tiny_model, tmp_path, ray_cluster):
    with pytest.raises(RewardFailureError, match=r"'hangs' failed on 32/32 samples.*\n.*timed out after 0.5 s"):
        run(tiny_model, tmp_path, [HANGS, GOOD], threshold=0.25, steps=3)
