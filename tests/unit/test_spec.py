import json

import pytest

from trainer.spec import SpecError, load_spec, parse_overrides, parse_spec
from trainer.spec.algorithms import GRPOSpec

BASE = {"model": {"path": "m"}, "rewards": [{"name": "regex", "config": {"pattern": "x"}}]}


def fields(data) -> dict[str, str]:
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    return {e["field"]: e["message"] for e in err.value.errors}


def test_defaults_make_a_runnable_spec():
    spec = parse_spec(BASE)
    assert spec.algorithm == GRPOSpec(tis_cap=None)  # "auto" is off with the default (HF) engine
    assert spec.learner.ranks == 2 and spec.rollout.workers == 2
    assert spec.run_dir.as_posix() == "runs/job"


def test_group_size_one_is_refused_with_the_field_named():
    errs = fields({**BASE, "algorithm": {"type": "grpo", "group_size": 1}})
    assert "greater than or equal to 2" in errs["algorithm.group_size"]


def test_knob_of_another_algorithm_is_refused():
    errs = fields({**BASE, "algorithm": {"type": "rloo", "scale_std": False}})
    assert errs["algorithm.scale_std"].startswith("unknown field")


def test_unknown_algorithm_type_lists_the_valid_ones():
    errs = fields({**BASE, "algorithm": {"type": "dpo"}})
    assert "'grpo', 'dr_grpo', 'rloo', 'reinforce_pp', 'dapo', 'gspo'" in errs["algorithm"]


def test_every_bad_field_is_reported_at_once():
    errs = fields({**BASE, "schedule": {"steps": -3}, "rollout": {"temperature": 0}, "typo": 1})
    assert set(errs) == {"schedule.steps", "rollout.temperature", "typo"}


def test_reward_needs_exactly_one_source():
    errs = fields({**BASE, "rewards": [{"weight": 1.0}]})
    assert "exactly one" in errs["rewards.0"]
    errs = fields({**BASE, "rewards": [{"import_path": "no_colon_here"}]})
    assert "package.module:function" in errs["rewards.0"]
    assert "at least 1 character" in fields({**BASE, "rewards": [{"name": ""}]})["rewards.0.name"]


def test_batch_must_split_over_ranks_and_micro_batches():
    errs = fields({**BASE, "rollout": {"prompts_per_step": 3}, "algorithm": {"group_size": 3},
                   "learner": {"ranks": 2}})
    assert "split evenly over 2 ranks" in errs["learner.ranks"]
    errs = fields({**BASE, "learner": {"ranks": 2, "micro_batch": 5}})
    assert "multiple of micro_batch=5" in errs["learner.micro_batch"]


def test_tis_cap_auto_follows_the_engine_and_an_explicit_cap_stays():
    assert parse_spec({**BASE, "rollout": {"engine": "vllm"}}).algorithm.tis_cap == 2.0
    assert parse_spec(BASE).algorithm.tis_cap is None
    assert parse_spec({**BASE, "algorithm": {"tis_cap": 3}}).algorithm.tis_cap == 3.0
    assert "algorithm.tis_cap" in fields({**BASE, "algorithm": {"tis_cap": 0.5}})


def test_tis_is_on_wherever_the_rollout_is_not_the_learner():
    """Older weights (asynchronous rollout) or another dtype: "auto" turns the correction on, and
    asynchronous rollout without it is refused with the field named."""
    assert parse_spec({**BASE, "rollout": {"max_staleness": 1}}).algorithm.tis_cap == 2.0
    assert parse_spec({**BASE, "rollout": {"dtype": "bfloat16"}}).algorithm.tis_cap == 2.0
    both = parse_spec({**BASE, "model": {"path": "m", "dtype": "bfloat16"}})
    assert both.algorithm.tis_cap is None and both.learner_dtype == both.rollout_dtype == "bfloat16"
    mixed = parse_spec({**BASE, "learner": {"dtype": "bfloat16"}})
    assert (mixed.learner_dtype, mixed.rollout_dtype, mixed.algorithm.tis_cap) == ("bfloat16", "float32", 2.0)
    errs = fields({**BASE, "rollout": {"max_staleness": 2}, "algorithm": {"tis_cap": None}})
    assert "max_staleness = 2" in errs["algorithm.tis_cap"]
    assert "rollout.max_staleness" in fields({**BASE, "rollout": {"max_staleness": -1}})


def test_gpu_engine_placements_that_cannot_work_are_refused():
    shared_gpu_nccl = {"engine": "vllm", "vllm": {"sleep": True, "weight_transfer": "nccl"}}
    assert "needs the engine and the learner on different GPUs" in fields(
        {**BASE, "rollout": shared_gpu_nccl})["rollout.vllm.weight_transfer"]
    unpaired = {"engine": "vllm", "workers": 1, "vllm": {"sleep": True}}
    assert "must equal learner.ranks (2)" in fields({**BASE, "rollout": unpaired})["rollout.vllm.sleep"]
    assert parse_spec({**BASE, "rollout": {"engine": "vllm", "vllm": {"sleep": True}}}).rollout.vllm.sleep


def test_run_files_in_toml_yaml_and_json_load_alike(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('[model]\npath = "m"\n[[rewards]]\nname = "json_valid"\n[schedule]\nsteps = 7\n')
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text("model: {path: m}\nrewards: [{name: json_valid}]\nschedule: {steps: 7}\n")
    json_file = tmp_path / "a.json"
    json_file.write_text(json.dumps({"model": {"path": "m"}, "rewards": [{"name": "json_valid"}],
                                     "schedule": {"steps": 7}}))
    specs = [load_spec(p) for p in (toml, yaml_file, json_file)]
    assert specs[0] == specs[1] == specs[2]
    assert specs[0].schedule.steps == 7


def test_overrides_are_typed_and_dotted(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[model]\npath = "m"\n[[rewards]]\nname = "json_valid"\n')
    spec = load_spec(path, parse_overrides(["schedule.steps=3", "learner.lr=0.5", "logging.wandb_mode=disabled"]))
    assert (spec.schedule.steps, spec.learner.lr, spec.logging.wandb_mode) == (3, 0.5, "disabled")


def test_a_bad_run_file_names_the_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\npath = "m"\n[[rewards]]\nname = "json_valid"\n[learner]\nzero_stage = 4\n')
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "learner.zero_stage" in str(err.value)


def test_spec_package_imports_no_ml_library_and_no_ray():
    import subprocess
    import sys

    code = ("import sys, trainer.spec, trainer.spec.results; "
            "print(sorted(m for m in ('torch', 'ray', 'transformers', 'deepspeed', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_outcome_model_jobs_take_no_rewards_and_policies_need_one():
    traces = {"name": "traces", "config": {"snapshot": "s.parquet"}}
    spec = parse_spec({"model": {"path": "m"}, "environment": traces, "algorithm": {"type": "outcome_model"},
                       "learner": {"micro_batch": 2}})
    assert spec.algorithm.fits_classifier and spec.algorithm.positive == ["resolved"] and spec.rewards == []
    errs = fields({**BASE, "environment": traces, "algorithm": {"type": "outcome_model"}, "learner": {"micro_batch": 2}})
    assert "scored by its traces' `outcome` label" in errs["rewards"]
    assert fields({"model": {"path": "m"}})["rewards"] == "expected at least one reward module"
    errs = fields({"model": {"path": "m"}, "algorithm": {"type": "outcome_model", "holdout": 1.0}})
    assert "less than 1" in errs["algorithm.holdout"]


def test_compare_to_names_another_reward_module():
    two = [{"name": "outcome_model", "config": {"path": "x"}, "compare_to": "resolution"},
           {"name": "resolution", "weight": 0.0}]
    assert parse_spec({**BASE, "rewards": two}).reward_comparisons == {"outcome_model": "resolution"}
    errs = fields({**BASE, "rewards": [{**two[0], "compare_to": "resolved"}, two[1]]})
    assert errs["rewards.0.compare_to"] == "'resolved' is not another of this job's reward modules; expected one of " \
                                          "['resolution']"


def test_a_diverged_metric_is_reported_as_null_not_nan():
    """NaN is not JSON (the control plane refuses it): a diverged loss still reaches it, as null."""
    import json

    from trainer.spec.reports import StepReport

    report = StepReport(kind="step", data={"step": 3, "metrics": {"loss": float("nan"), "kl": float("inf"),
                                                                  "nested": [1.0, float("-inf")]}})
    assert json.loads(json.dumps(report.model_dump(mode="json"), allow_nan=False))["data"]["metrics"] == {
        "loss": None, "kl": None, "nested": [1.0, None]}
