"""Asynchronous rollout's rules that need no cluster: which samples are too stale to learn from."""

import pytest

from environments.base import Task
from rewards import ScoreResult
from trainer.driver.pipeline import drop_stale
from trainer.types import Completion, Sample


def samples_of(versions: list[int]) -> list[Sample]:
    task = Task("p", [{"role": "user", "content": "p"}])
    return [Sample(task, i // 2, [1], Completion([5], [0.0], "a", False), v) for i, v in enumerate(versions)]


def test_samples_within_the_staleness_bound_are_kept_as_they_are():
    scores = ScoreResult([0.5, 1.0, 0.0, 1.0], {"r": [0.5, 1.0, 0.0, 1.0]}, [False] * 4)
    kept, stats = drop_stale(samples_of([4, 4, 3, 3]), scores, step=5, max_staleness=1)
    assert kept is scores
    assert stats == {"async/staleness_mean": 0.5, "async/staleness_max": 1.0, "async/dropped": 0.0}


def test_staler_samples_leave_the_loss_and_are_counted_not_failed():
    scores = ScoreResult([0.5, 1.0, 0.0, 1.0], {"r": [0.5, 1.0, 0.0, 1.0]}, [False, False, True, False])
    kept, stats = drop_stale(samples_of([2, 3, 4, 4]), scores, step=5, max_staleness=1)
    # Version 4 trains at step 5: version 2 is two behind (out), version 3 one (kept).
    assert kept.failed == [True, False, True, False] and kept.total == [0.0, 1.0, 0.0, 1.0]
    assert stats["async/dropped"] == 1.0 and stats["async/staleness_max"] == 2.0
    assert kept.failures == [] and kept.failure_counts() == {"r": 0}  # no reward module is blamed


@pytest.mark.parametrize("step", [1, 2])
def test_synchronous_samples_are_never_stale(step):
    scores = ScoreResult([1.0, 1.0], {"r": [1.0, 1.0]}, [False, False])
    _, stats = drop_stale(samples_of([step - 1, step - 1]), scores, step=step, max_staleness=0)
    assert stats["async/staleness_max"] == 0.0 and stats["async/dropped"] == 0.0
