"""The outcome model through the real stack: an `outcome_model` job fits a classifier on logged
traces (local Ray, two DeepSpeed ranks), measures it on the traces it held out, exports it; the
`outcome_model` reward module then scores conversations with the export, and a GRPO job rewarded
by it logs how far its predictions are from a true reward (`compare_to`)."""

import json

import pytest

from environments.snapshot import write_snapshot
from rewards import load
from rewards.outcome_model import META_FILE
from tests.conftest import DIGITS, job_payload
from trainer.driver.outcomes import is_held_out
from trainer.loop import train
from trainer.outcome_model import fit
from trainer.spec import parse_spec

pytestmark = pytest.mark.slow


def conversation(row: dict, resolved: bool) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["answer"] if resolved else row["topic"]}]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in DIGITS.read_text().splitlines()[:60]]


def outcome_spec(tiny_model, snapshot, out):
    return parse_spec(job_payload(
        tiny_model, out, name="outcome", rewards=[],
        algorithm={"type": "outcome_model", "label": "outcome", "positive": ["resolved"], "holdout": 0.25},
        environment={"name": "traces", "config": {"snapshot": str(snapshot)}},
        rollout={"workers": 1, "prompts_per_step": 16},
        learner={"ranks": 2, "zero_stage": 2, "lr": 3e-3, "micro_batch": 8},
        schedule={"steps": 24, "checkpoint_interval": 0, "eval_before_after": True}))


@pytest.fixture(scope="module")
def traces(rows) -> list[dict]:
    """Traces resolved when the agent answered in digits, escalated when it wrote the topic word."""
    return [{"trace_id": f"t{i}-{outcome}", "model": "agent", "outcome": {"outcome": outcome},
             "messages": conversation(row, outcome == "resolved")}
            for i, row in enumerate(rows) for outcome in ("resolved", "escalated")]


@pytest.fixture(scope="module")
def snapshot(traces, tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "snapshot.parquet"
    write_snapshot(traces, path)
    return path


@pytest.fixture(scope="module")
def fitted(tiny_model, traces, snapshot, ray_cluster, tmp_path_factory):
    return fit(outcome_spec(tiny_model, snapshot, tmp_path_factory.mktemp("fit")), echo=lambda _: None), traces


def test_fits_and_measures_on_held_out_traces(fitted):
    result, traces = fitted
    held = [t for t in traces if is_held_out(t["trace_id"], 0.25)]
    after = result.evaluations["after"]
    assert after["eval/traces"] == len(held) and 0 < len(held) < len(traces)
    assert after["eval/auc"] > 0.9, after
    assert after["eval/auc"] > result.evaluations["before"]["eval/auc"] + 0.2  # learned, not the fresh head
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    meta = json.loads((result.export_dir / META_FILE).read_text())
    assert meta["heldout"]["auc"] == after["eval/auc"] and meta["traces"]["heldout"] == len(held)
    assert sum(b["count"] for b in meta["calibration"]) == len(held)


def test_resume_fits_what_an_uninterrupted_run_fits(fitted, tiny_model, snapshot, tmp_path):
    spec = outcome_spec(tiny_model, snapshot, tmp_path)
    assert fit(spec, stop_after=10, echo=lambda _: None).export_dir is None
    resumed = fit(spec, echo=lambda _: None)
    assert resumed.history[0]["loss"] == pytest.approx(fitted[0].history[10]["loss"], rel=1e-5)
    assert resumed.evaluations["after"] == pytest.approx(fitted[0].evaluations["after"], rel=1e-5)


def test_reward_module_scores_conversations_as_the_job_measured(fitted, rows):
    """The reward module reads a conversation exactly as the job did: the held-out traces score
    (prompt and completion apart, as rollouts reach reward modules) to the job's own AUC."""
    from trainer.algorithms.classification import roc_auc

    result, traces = fitted
    module = load("outcome_model", config={"path": str(result.export_dir)})
    held = [t for t in traces if is_held_out(t["trace_id"], 0.25)]
    probs = module.fn([t["messages"][:1] for t in held], [t["messages"][1:] for t in held])
    assert all(0.0 <= p <= 1.0 for p in probs)
    labels = [t["outcome"]["outcome"] == "resolved" for t in held]
    assert roc_auc(probs, labels) == pytest.approx(result.evaluations["after"]["eval/auc"], abs=1e-6)


def test_grpo_rewarded_by_the_outcome_model_logs_its_gap_to_the_truth(fitted, tiny_model, tmp_path):
    result, _ = fitted
    spec = parse_spec(job_payload(tiny_model, tmp_path, rewards=[
        {"name": "outcome_model", "config": {"path": str(result.export_dir)}, "compare_to": "digit_share"},
        {"import_path": "tests.fixtures.trl_rewards:digit_share", "weight": 0.0}],
        schedule={"steps": 2, "checkpoint_interval": 0, "eval_before_after": False}))
    run = train(spec, echo=lambda _: None)
    for m in run.history:
        assert m["reward/mean"] == pytest.approx(m["reward/outcome_model"])  # the truth has weight 0
        assert m["reward_gap/outcome_model"] == pytest.approx(m["reward/outcome_model"] - m["reward/digit_share"])
        assert m["reward_gap/outcome_model_abs"] >= abs(m["reward_gap/outcome_model"])
