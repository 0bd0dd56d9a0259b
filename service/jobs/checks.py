"""Checks that need a team's code or data, run on the cluster — never in the API process.

Importing a reward module, reading a dataset or demonstrations, loading a model, the dry run and
scoring with a reward module all run as a short Ray job, `python -m trainer.checks FOLDER`, with
a time limit and with the cluster's environment (no `FLYWHEEL_*` settings: no database URL, no
keys). The request goes down as `FOLDER/request.json`; the job writes what it is working on to
`FOLDER/progress.json` before each step and its answer to `FOLDER/result.json`. The API awaits
it without blocking its other requests: it polls the job's status from a worker thread and
sleeps on the event loop in between. See docs/architecture.md, "Team code".

Past the time limit the job is stopped and the request fails with `check_timeout`, naming the
field and the module or file the check was on. Each check limits its own memory (`memory_mb`, else
the check's default); past it the request fails with `check_memory_limit`, naming the field. A
check that ends without an answer is a 502 `check_failed` naming the field it was on and an error
id; its log tail (a traceback, the cluster's paths) goes to the service's log under that id, not
to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from service.core.errors import ApiError
from service.core.store import new_id
from trainer.spec import SpecError
from trainer.spec.checks import CheckProgress, CheckRequest, CheckResult

POLL_S = 0.1
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "MISSING"}
log = logging.getLogger("flywheel.checks")


class ClusterChecks:
    memory_mb: int | None = None
    """The memory limit of each check, in MiB; None: the check's own (`trainer/checks/__main__.py`:
    4 GiB, 16 GiB for a dry run)."""

    def __init__(self, launcher, work_dir: Path, max_concurrent: int = 4, per_team: int = 2):
        self.launcher, self.work_dir = launcher, Path(work_dir)
        # Each check is a Python process on the cluster. A team's first check runs at once, on a
        # slot of its own: other teams' slow checks never hold up its trivial validation. Its
        # further checks (up to `per_team` running or waiting) share `max_concurrent` slots.
        self._shared = asyncio.Semaphore(max_concurrent)
        self.per_team = per_team
        self._in_flight: dict[str, int] = {}
        self._running: dict[str, int] = {}

    def admit(self, team: str, timeout_s: float) -> None:
        """429 now if `team` has `per_team` checks running or waiting. Routes call it before they
        parse a spec, so a burst of one team's requests costs the event loop next to nothing."""
        if self._in_flight.get(team, 0) >= self.per_team:
            raise ApiError(429, "too_many_checks", f"this team already has {self.per_team} validations, dry runs "
                           "or reward runs in progress; retry when one has finished", None,
                           headers={"Retry-After": str(max(1, round(timeout_s / 10)))})

    async def run(self, request: CheckRequest, timeout_s: float, team: str) -> dict[str, Any]:
        """The check's answer. Raises SpecError (bad fields) or ApiError (anything else; 429 when
        `team` already has `per_team` checks running or waiting)."""
        self.admit(team, timeout_s)
        self._in_flight[team] = self._in_flight.get(team, 0) + 1
        try:
            async with self._slot(team):
                folder = (self.work_dir / new_id("check")).resolve()
                folder.mkdir(parents=True)
                try:
                    (folder / "request.json").write_text(request.model_dump_json())
                    result = await self._await(folder, timeout_s)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        finally:
            self._in_flight[team] -= 1
        if result.spec_errors is not None:
            raise SpecError([e.model_dump() for e in result.spec_errors])
        if result.error is not None:
            e = result.error
            raise ApiError(e.status, e.code, e.message, e.field)
        return result.answer()

    @contextlib.asynccontextmanager
    async def _slot(self, team: str):
        own = not self._running.get(team)
        self._running[team] = self._running.get(team, 0) + 1
        try:
            if own:
                yield
            else:
                async with self._shared:
                    yield
        finally:
            self._running[team] -= 1

    async def _await(self, folder: Path, timeout_s: float) -> CheckResult:
        ray_id = await asyncio.to_thread(self.launcher.submit_check, folder, self.memory_mb)
        deadline = time.monotonic() + timeout_s
        while (status := await asyncio.to_thread(self.launcher.status, ray_id)).state not in TERMINAL:
            if time.monotonic() > deadline:
                await asyncio.to_thread(self.launcher.stop, ray_id)
                raise self._timed_out(folder, timeout_s)
            await asyncio.sleep(POLL_S)
        result_file = folder / "result.json"
        if not result_file.exists():
            logs = await asyncio.to_thread(self.launcher.logs_tail, ray_id)
            error_id, on = uuid.uuid4().hex[:12], self._progress(folder)
            log.error("check %s (Ray job %s) ended %s without an answer, on %s: %s (error id %s)\n%s", folder.name,
                      ray_id, status.state, on.field, status.message, error_id, logs)
            raise ApiError(502, "check_failed", f"{on.field or 'the checks'}: the check ended ({status.state.lower()}) "
                           f"without an answer while {on.what} (error id {error_id}); the operators' log has the "
                           "details", on.field)
        return CheckResult.model_validate_json(result_file.read_text())

    @staticmethod
    def _progress(folder: Path) -> CheckProgress:
        try:
            return CheckProgress.model_validate_json((folder / "progress.json").read_text())
        except (OSError, ValueError):
            return CheckProgress(field=None, what="starting")

    @staticmethod
    def _timed_out(folder: Path, timeout_s: float) -> ApiError:
        try:
            on = CheckProgress.model_validate_json((folder / "progress.json").read_text())
        except (OSError, ValueError):
            on = CheckProgress(field=None, what="starting")
        return ApiError(422, "check_timeout", f"{on.field or 'the checks'}: {on.what} did not finish within "
                        f"the checks' time limit of {timeout_s:g} s", on.field)
