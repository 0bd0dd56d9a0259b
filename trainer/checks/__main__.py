"""`python -m trainer.checks FOLDER`: one check, run on the cluster for the control plane.

FOLDER/request.json is a `trainer.spec.checks.CheckRequest`: a preflight (the spec's checks, then
with `dry_run` > 0 a dry run; every path the spec names must lie under the data roots) or a score
request (one reward module on given samples). Before each step the check writes
FOLDER/progress.json (a `CheckProgress`); at the end it writes FOLDER/result.json (a `CheckResult`:
the answer, the spec's field errors, or another refusal). The control plane (`service.jobs.checks`)
starts it as a Ray job with a time limit and reads both files.

The check limits its own memory first (`--memory-mb`, else `CHECK_MEMORY_MB`, or
`DRY_RUN_MEMORY_MB` for a dry run): a team's data or code that needs more fails the check with
`check_memory_limit`, naming the field it was on, instead of taking the cluster's machine down.

    python -m trainer.checks FOLDER [--memory-mb N]
"""

from __future__ import annotations

import argparse
import os
import resource
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

CHECK_MEMORY_MB = 4096
"""A check's memory limit in MiB: room for torch and transformers (0.3 GiB), the reward modules,
and the dataset rows a check keeps (`CHECK_ROWS`)."""
DRY_RUN_MEMORY_MB = 16384
"""A dry run's, which loads the model too (a 1.5B-parameter model takes 6 GiB in float32)."""
CHECK_ROWS = 1000
"""Rows of each dataset file a check keeps (it reads and checks every one): a dry run samples
from them."""


def limit_memory(mb: int) -> None:
    """Cap this process's data segment (RLIMIT_DATA: heap and private writable mappings; unlike
    RLIMIT_AS, address space that torch reserves and memory-mapped files do not count). The hard
    limit too, so a reward module cannot lift it again."""
    limit = mb << 20
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _write(path: Path, value: BaseModel) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value.model_dump_json())
    os.replace(tmp, path)


def check_spec(request: PreflightRequest, progress) -> CheckResult:
    from environments.dataset import ROWS_KEPT
    from trainer.checks.preflight import check_data_roots, preflight
    from trainer.spec import SpecError, parse_spec

    ROWS_KEPT.set(CHECK_ROWS)
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
    except MemoryError:
        raise  # the memory limit, which `main` names
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
    # The exception's last line, as the dry run reports it: the traceback is the cluster's paths.
    return CheckResult(rewards=result.components[module.name], failed=result.failed,
                       failures=[ScoreFailure(indices=f.indices, error=f.error.strip().splitlines()[-1][:500])
                                 for f in result.failures])


def main(folder: str, memory_mb: int | None = None) -> int:
    root = Path(folder)
    configure_logging(root.name)
    request = TypeAdapter(CheckRequest).validate_json((root / "request.json").read_text())
    dry = isinstance(request, PreflightRequest) and request.dry_run > 0
    memory_mb = memory_mb or (DRY_RUN_MEMORY_MB if dry else CHECK_MEMORY_MB)
    limit_memory(memory_mb)
    on = CheckProgress(field=None, what="starting")

    def progress(field: str | None, what: str) -> None:
        nonlocal on
        on = CheckProgress(field=field, what=what)
        _write(root / "progress.json", on)

    check = check_spec if isinstance(request, PreflightRequest) else score_samples
    try:
        result = check(request, progress)
    except MemoryError:
        result = CheckResult(error=CheckError(
            status=422, code="check_memory_limit", field=on.field,
            message=f"{on.field or 'the checks'}: {on.what} went over the checks' memory limit of {memory_mb:,} "
                    "MiB; use smaller data or a smaller model, or ask the operators for a higher limit"))
    _write(root / "result.json", result)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m trainer.checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--memory-mb", type=int, default=None, help="this check's memory limit in MiB")
    args = parser.parse_args()
    sys.exit(main(args.folder, args.memory_mb))
