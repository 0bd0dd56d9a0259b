"""The promotion gate: which held-out measures a candidate must not make worse (or must improve by
how much) against the model a deployment serves, and ceilings it must stay under. Pure: two
evaluations in, a verdict table out.

    gate = Gate(rules=[Rule(metric="resolved_rate", min_gain=0.02),
                       Rule(metric="violation_rate", better="lower")],
                ceilings={"violation_rate": 0.05})
    verdict = judge(gate, current_metrics, candidate_metrics)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.spec import EnvironmentSpec, RewardSpec

Metric = str


def _metric(name: str) -> str:
    """Metrics are named as evaluations store them (`eval/resolved_rate`); the prefix may be left out."""
    return name if name.startswith("eval/") else f"eval/{name}"


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    metric: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./-]+$")
    """A held-out measure (`resolved_rate`, `reward_mean`, `auc`, ...)."""

    better: Literal["higher", "lower"] = "higher"
    """Which way is better."""

    min_gain: float = Field(default=0.0, ge=-1e6, le=1e6, allow_inf_nan=False)
    """How much better the candidate must be: 0 is "not worse", 0.05 "five points better" for a
    rate, -0.01 "at most one point worse"."""

    @field_validator("metric")
    @classmethod
    def _prefixed(cls, value: str) -> str:
        return _metric(value)


class HeldOut(BaseModel):
    """The held-out tasks both models are measured on, when a stored evaluation is missing or was
    run elsewhere: an environment's eval split, scored by these reward modules."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    environment: EnvironmentSpec
    """As a job spec's `environment`: `{name = "support_desk", config = {eval_size = 200}}`."""

    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="resolution")], min_length=1,
                                      max_length=32)
    """As a job spec's `rewards`."""


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    rules: list[Rule] = Field(default_factory=lambda: [Rule(metric="resolved_rate"),
                                                       Rule(metric="violation_rate", better="lower")],
                              max_length=50)
    """Comparisons with the current model, all of which must pass. The default: resolution not
    lower, violations not higher."""

    ceilings: dict[str, float] = Field(default_factory=dict, max_length=50)
    """Highest value the candidate may have, whatever the current model's (`violation_rate`: 0.05)."""

    evaluation: HeldOut | None = None
    """Where a model without a comparable stored evaluation is evaluated (an evaluation job each)
    before the comparison; none: a promotion between models evaluated on different tasks is refused."""

    @field_validator("ceilings")
    @classmethod
    def _prefixed(cls, value: dict[str, float]) -> dict[str, float]:
        return {_metric(k): v for k, v in value.items()}


def judge(gate: Gate, current: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """The verdict: `passed`, and one row per rule and ceiling (metric, current, candidate,
    change, what was required, passed). A measure missing from either evaluation fails its row."""
    rows = []
    for rule in gate.rules:
        was, now = current.get(rule.metric), candidate.get(rule.metric)
        sign = 1 if rule.better == "higher" else -1
        required = (f"{'≥' if sign > 0 else '≤'} current {'+' if sign * rule.min_gain >= 0 else '-'} "
                    f"{abs(rule.min_gain):g}")
        if was is None or now is None:
            rows.append({"metric": rule.metric, "current": was, "candidate": now, "change": None,
                         "required": required, "passed": False, "reason": "missing from an evaluation"})
            continue
        passed = sign * (now - was) >= rule.min_gain - 1e-12
        rows.append({"metric": rule.metric, "current": was, "candidate": now, "change": now - was,
                     "required": required, "passed": passed})
    for metric, ceiling in gate.ceilings.items():
        now = candidate.get(metric)
        rows.append({"metric": metric, "current": current.get(metric), "candidate": now,
                     "change": None if now is None or current.get(metric) is None else now - current[metric],
                     "required": f"≤ {ceiling:g}", "passed": now is not None and now <= ceiling,
                     **({"reason": "missing from an evaluation"} if now is None else {})})
    return {"passed": all(r["passed"] for r in rows), "rows": rows}


def verdict_text(verdict: dict[str, Any]) -> str:
    """The failing rows in one line, for the refusal's message."""
    failed = [r for r in verdict["rows"] if not r["passed"]]
    parts = [f"{r['metric']} {_num(r['current'])} → {_num(r['candidate'])} (required {r['required']}"
             f"{'; ' + r['reason'] if r.get('reason') else ''})" for r in failed]
    return "; ".join(parts)


def _num(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4g}"
