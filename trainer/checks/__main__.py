"""`python -m trainer.checks FOLDER`: one check, run on the cluster for the control plane.

FOLDER/request.json is a `trainer.spec.checks.CheckRequest`: a preflight (the spec's checks, then
with `dry_run` > 0 a dry run; every path the spec names must lie under the data roots) or a score
request (one reward module on given samples). Before each step the check writes
FOLDER/progress.json (a `CheckProgress`); at the end it writes FOLDER/result.json (a `CheckResult`:
the answer, the spec's field errors, or another refusal). The control plane (`service.jobs.checks`)
starts it as a Ray job with a time limit and reads both files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from trainer.logs import configure_logging
from trainer.spec.checks import (
    CheckError,
    CheckProgress,
    CheckRequest,
    CheckResult,
    PreflightRequest,
    ScoreFailure,
    ScoreSamplesRequest,
)


def _write(path: Path, value: BaseModel) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value.model_dump_json())
    os.replace(tmp, path)


def check_spec(request: PreflightRequest, progress) -> CheckResult:
    from trainer.checks.preflight import check_data_roots, preflight
    from trainer.spec import SpecError, parse_spec

    try:
        spec = parse_spec(request.spec)
        if request.data_roots is not None:
            check_data_roots(spec, request.data_roots)
        env = preflight(spec, progress)
    except SpecError as exc:
        return CheckResult(spec_errors=exc.errors)
    if not request.dry_run:
        return CheckResult()
    from trainer.checks.dry_run import dry_run

    progress("dry_run", f"rolling out {request.dry_run} tasks with {spec.model.path}")
    try:
        return CheckResult(dry_run=dry_run(spec, request.dry_run, env=env))
    except Exception as exc:  # noqa: BLE001 - the model or environment failed at run time: say so
        return CheckResult(error=CheckError(status=422, code="dry_run_failed",
                                            message=f"the dry run failed: {type(exc).__name__}: {exc}"))


def score_samples(request: ScoreSamplesRequest, progress) -> CheckResult:
    from rewards import load, score
    from rewards.base import RewardConfigError
    from rewards.registry import UnknownRewardError

    progress("name", f"loading reward module {request.name!r}")
    try:
        module = load(request.name, config=request.config, timeout_s=request.timeout_s)
    except UnknownRewardError as exc:
        return CheckResult(error=CheckError(status=404, code="not_found", message=str(exc), field="name"))
    except RewardConfigError as exc:
        return CheckResult(error=CheckError(status=422, code="invalid_config", message=str(exc),
                                            field=f"config.{exc.field}" if exc.field else "config"))
    progress("completions", f"scoring {len(request.completions)} samples with {request.name!r}")
    ids: list[list[int]] = [[] for _ in request.completions]
    result = score([module], request.prompts, request.completions, ids, request.columns)
    return CheckResult(rewards=result.components[module.name], failed=result.failed,
                       failures=[ScoreFailure(indices=f.indices, error=f.error) for f in result.failures])


def main(folder: str) -> int:
    root = Path(folder)
    configure_logging(root.name)
    request = TypeAdapter(CheckRequest).validate_json((root / "request.json").read_text())

    def progress(field: str | None, what: str) -> None:
        _write(root / "progress.json", CheckProgress(field=field, what=what))

    check = check_spec if isinstance(request, PreflightRequest) else score_samples
    _write(root / "result.json", check(request, progress))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
