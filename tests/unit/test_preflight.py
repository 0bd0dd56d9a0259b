import subprocess
import sys

import pytest

from tests.conftest import DIGITS, ROOT
from trainer.checks.preflight import preflight
from trainer.spec import SpecError, parse_spec


def spec(model, **over):
    data = {"model": {"path": str(model)}, "environment": {"config": {"train": str(DIGITS)}},
            "rewards": [{"name": "json_valid"}]}
    data.update(over)
    return parse_spec(data)


def errors(s) -> dict[str, str]:
    with pytest.raises(SpecError) as err:
        preflight(s)
    return {e["field"]: e["message"] for e in err.value.errors}


def test_a_good_job_passes_and_returns_the_environment(tiny_model):
    env = preflight(spec(tiny_model))
    assert len(list(env.tasks("train"))) == 64


def test_model_path_that_does_not_exist(tmp_path):
    assert errors(spec(tmp_path / "nope"))["model.path"].startswith("no such model folder")
    assert "no config.json" in errors(spec(tmp_path))["model.path"]


def test_hub_ids_are_left_to_the_loader(tiny_model):
    # `org/name` may be a hub id: preflight lets it through (the loader decides)
    preflight(spec("Qwen/Qwen2.5-0.5B-Instruct"))


def test_environment_errors_name_the_config_field(tiny_model, tmp_path):
    errs = errors(spec(tiny_model, environment={"config": {"train": str(tmp_path / "x.jsonl")}}))
    assert errs["environment.config.train"].startswith("no such file or folder")
    errs = errors(spec(tiny_model, environment={"name": "chess"}))
    assert "valid names: dataset" in errs["environment.name"]


def test_reward_errors_name_each_module(tiny_model):
    errs = errors(spec(tiny_model, rewards=[{"name": "regex", "config": {"pattern": "("}},
                                            {"name": "resolvd"}, {"import_path": "nowhere.mod:fn"}]))
    assert "not a valid regular expression" in errs["rewards.0.config.pattern"]
    assert "unknown reward module 'resolvd'" in errs["rewards.1.name"]
    assert "cannot import 'nowhere.mod'" in errs["rewards.2.import_path"]


def test_cli_refuses_a_bad_run_file_with_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[model]\npath = "{tmp_path / "missing-model"}"\n[[rewards]]\nname = "json_valid"\n'
                   f'[environment.config]\ntrain = "{DIGITS}"\n')
    out = subprocess.run([sys.executable, "-m", "trainer.run", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert f"invalid {bad}" in out.stderr and "model.path: no such model folder" in out.stderr


def test_data_roots_refuse_every_named_path_outside_them_and_follow_symlinks(tmp_path):
    from trainer.checks.preflight import check_data_roots, named_paths

    root = tmp_path / "data"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    s = spec(root / "model", environment={"config": {"train": str(root / "escape" / "passwd"),
                                                     "eval": str(root / "eval.jsonl")}},
             rewards=[{"import_path": "/srv/team/reward.py:score"}, {"import_path": "tests.fixtures.trl_rewards:x"}],
             warm_start={"data": "/etc/shadow"})
    assert set(named_paths(s)) == {"model.path", "environment.config.train", "environment.config.eval",
                                   "rewards.0.import_path", "warm_start.data"}
    with pytest.raises(SpecError) as err:
        check_data_roots(s, [str(root)])
    refused = {e["field"]: e["message"] for e in err.value.errors}
    assert set(refused) == {"environment.config.train", "rewards.0.import_path", "warm_start.data"}
    assert len(set(refused.values())) == 1
    check_data_roots(spec(root / "model"), [str(root), str(DIGITS.parent)])  # all inside: no error


def test_traces_the_algorithm_cannot_read_are_refused_before_the_job(tiny_model, tmp_path):
    from environments.snapshot import write_snapshot

    trace = {"trace_id": "t-1", "model": "agent", "outcome": {"outcome": "resolved"},
             "messages": [{"role": "user", "content": "How many orders?"}, {"role": "assistant", "content": "12"}]}
    write_snapshot([trace], tmp_path / "s.parquet")
    job = spec(tiny_model, environment={"name": "traces", "config": {"snapshot": str(tmp_path / "s.parquet")}},
               rewards=[{"name": "resolution"}], learner={"micro_batch": 2}, algorithm={"type": "filtered_sft"})
    assert preflight(job).tasks("train")[0].id == "t-1"  # filtered SFT reads no behaviour logprobs
    job = spec(tiny_model, environment={"name": "traces", "config": {"snapshot": str(tmp_path / "s.parquet")}},
               rewards=[{"name": "resolution"}], learner={"micro_batch": 2}, algorithm={"type": "offline_pg"})
    assert "trace 't-1', message 1: no behaviour logprobs" in errors(job)["environment.config.snapshot"]


def test_traces_an_outcome_model_cannot_be_fitted_on_name_the_field(tiny_model, tmp_path):
    from environments.snapshot import write_snapshot

    def job(outcomes, **algorithm):
        traces = [{"trace_id": f"t-{i}", "model": "agent", "outcome": o,
                   "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
                  for i, o in enumerate(outcomes)]
        write_snapshot(traces, tmp_path / "s.parquet")
        return spec(tiny_model, environment={"name": "traces", "config": {"snapshot": str(tmp_path / "s.parquet")}},
                    rewards=[], learner={"micro_batch": 2}, algorithm={"type": "outcome_model", **algorithm})

    assert "no trace has the label 'accepted'; the traces' outcome labels are ['outcome']" in \
        errors(job([{"outcome": "resolved"}] * 4, label="accepted"))["algorithm.label"]
    assert "all 4 labelled traces are positive" in errors(job([{"outcome": "resolved"}] * 4))["algorithm.positive"]
    mixed = [{"outcome": "resolved"}, {"outcome": "escalated"}] * 2
    assert "do not hold both outcomes" in errors(job(mixed, holdout=0.01))["algorithm.holdout"]
    assert len(preflight(job(mixed * 20)).tasks("train")) == 80


def test_a_reward_module_path_is_a_named_path_and_must_be_an_export(tiny_model, tmp_path):
    from trainer.checks.preflight import named_paths

    s = spec(tiny_model, rewards=[{"name": "outcome_model", "config": {"path": str(tmp_path)}}])
    assert named_paths(s)["rewards.0.config.path"] == str(tmp_path)
    assert "is not an outcome model: expected the folder an outcome_model job exported" in \
        errors(s)["rewards.0.config.path"]
