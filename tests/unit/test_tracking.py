from trainer.driver.tracking import progress_line

M = {"reward/mean": 0.4123, "kl": 0.00123, "perf/tokens_per_s": 812.4, "time/step": 1.92, "time/rollout": 0.81,
     "time/reward": 0.1, "time/learn": 0.9, "time/sync": 0.11, "reward/failed": 0.0}


def test_progress_line_reads_in_one_glance():
    assert progress_line(3, 20, M) == ("step 3/20 | reward 0.412 | kl 0.0012 | 812 tok/s | 1.92 s "
                                       "(rollout 0.81 reward 0.10 learn 0.90 sync 0.11)")


def test_progress_line_shows_failures_and_eval_when_present():
    line = progress_line(3, 20, {**M, "reward/failed": 5.0, "eval/reward_mean": 0.5})
    assert line.endswith("| reward failures 5 | eval reward 0.500")
