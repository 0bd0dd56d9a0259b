"""`python -m trainer.checks FOLDER`: one check, run on the cluster for the control plane.

FOLDER/request.json is one of
    {"kind": "preflight", "spec": {...}, "dry_run": N,      the spec's checks, then (N > 0) a dry run;
     "data_roots": [...]}                                    every path the spec names must be under one
    {"kind": "score", "name": ..., "config": {...}, "timeout_s": ..., "prompts": [...],
     "completions": [...], "columns": {...}}                 one reward module on given samples
Before each step the check writes FOLDER/progress.json ({field, what}); at the end it writes
FOLDER/result.json: the answer, `{"spec_errors": [{field, message}, ...]}`, or
`{"error": {status, code, message, field}}`. The control plane (`service.jobs.checks`) starts it
as a Ray job with a time limit and reads both files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _write(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def check_spec(request: dict[str, Any], progress) -> dict[str, Any]:
    from trainer.checks.preflight import check_data_roots, preflight
    from trainer.spec import SpecError, parse_spec

    try:
        spec = parse_spec(request["spec"])
        if request.get("data_roots") is not None:
            check_data_roots(spec, request["data_roots"])
        env = preflight(spec, progress)
    except SpecError as exc:
        return {"spec_errors": exc.errors}
    if not request.get("dry_run"):
        return {}
    from trainer.checks.dry_run import dry_run

    progress("dry_run", f"rolling out {request['dry_run']} tasks with {spec.model.path}")
    try:
        return {"dry_run": dry_run(spec, request["dry_run"], env=env)}
    except Exception as exc:  # noqa: BLE001 - the model or environment failed at run time: say so
        return {"error": {"status": 422, "code": "dry_run_failed",
                          "message": f"the dry run failed: {type(exc).__name__}: {exc}", "field": None}}


def score_samples(request: dict[str, Any], progress) -> dict[str, Any]:
    from rewards import load, score
    from rewards.base import RewardConfigError
    from rewards.registry import UnknownRewardError

    progress("name", f"loading reward module {request['name']!r}")
    try:
        module = load(request["name"], config=request["config"], timeout_s=request["timeout_s"])
    except UnknownRewardError as exc:
        return {"error": {"status": 404, "code": "not_found", "message": str(exc), "field": "name"}}
    except RewardConfigError as exc:
        return {"error": {"status": 422, "code": "invalid_config", "message": str(exc),
                          "field": f"config.{exc.field}" if exc.field else "config"}}
    progress("completions", f"scoring {len(request['completions'])} samples with {request['name']!r}")
    ids: list[list[int]] = [[] for _ in request["completions"]]
    result = score([module], request["prompts"], request["completions"], ids, request["columns"])
    return {"rewards": result.components[module.name], "failed": result.failed,
            "failures": [{"indices": f.indices, "error": f.error} for f in result.failures]}


KINDS = {"preflight": check_spec, "score": score_samples}


def main(folder: str) -> int:
    root = Path(folder)
    request = json.loads((root / "request.json").read_text())

    def progress(field: str, what: str) -> None:
        _write(root / "progress.json", {"field": field, "what": what})

    _write(root / "result.json", KINDS[request["kind"]](request, progress))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
