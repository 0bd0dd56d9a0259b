"""The scheduler: start queued jobs when their team's quota and the cluster allow (FIFO within
priority), and reconcile live jobs with Ray's own record of them.

It runs in the service process as one asyncio task (`run_forever`); each `tick` is plain
synchronous code on a fresh session, so tests can call it directly. When the service runs
several processes (`flywheel serve --workers N`), every one runs the task but only the holder of
the store's `scheduler` lease schedules: it renews the lease each tick, and when it dies another
takes over once the lease expires (`scheduler_lease_s`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sys
import uuid
from datetime import UTC, timedelta
from pathlib import Path

from sqlalchemy import func, select

from service.core.auth import new_job_token
from service.core.states import LIVE, JobState
from service.core.store import Job, JobEvent, Team, hold_lease, now, release_lease
from service.jobs import logic

log = logging.getLogger("flywheel.scheduler")

RAY_TERMINAL = {"SUCCEEDED": JobState.succeeded, "FAILED": JobState.failed, "STOPPED": JobState.cancelled}
EXIT_CODE = re.compile(r"failed with exit code (-?\d+)")
EXIT_CLUSTER_FAILURE = 3
"""`python -m trainer.run`'s status when an actor or node died under it (trainer/run.py)."""


def cluster_failure(message: str) -> bool:
    """Whether a failed Ray job failed for the cluster's sake, not its own: the trainer said so
    (its exit status), or the job ended with no exit status at all (its node or supervisor died)."""
    code = EXIT_CODE.search(message)
    return code is None or int(code.group(1)) == EXIT_CLUSTER_FAILURE


INSTALL_PATHS = sorted({str(Path(__file__).resolve().parents[2]), sys.prefix, sys.base_prefix,
                        str(Path.home())}, key=len, reverse=True)
SITE_PACKAGES = re.compile(r"[^\s\"'()]*/(site|dist)-packages/")


def without_paths(text: str) -> str:
    """A job's failure as its team reads it: the tail of its own log, with where the service and
    its Python are installed left out (`<site-packages>/`, `<install>`)."""
    text = SITE_PACKAGES.sub("<site-packages>/", text)
    for path in INSTALL_PATHS:
        text = text.replace(path, "<install>")
    return text.strip()


def _last_service_event(session, job: Job) -> str | None:
    """The kind of the last event the service itself wrote on a job (trainer events count up
    from 1, the service's down from -1)."""
    return session.scalar(select(JobEvent.kind).where(JobEvent.job_id == job.id, JobEvent.seq < 0)
                          .order_by(JobEvent.seq).limit(1))


def _reported_failure(session, job: Job) -> str | None:
    """What the trainer reported when it failed in its latest launch (its `failed` event after
    the last `starting`), the exception by name; None when it could not report (its node died).
    Ray's own message holds only the tail of the logs, which another rank's traceback can fill."""
    launched = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job.id,
                                                                  JobEvent.kind == JobState.starting.value))
    return session.scalar(select(JobEvent.message).where(
        JobEvent.job_id == job.id, JobEvent.seq > 0, JobEvent.kind == "failed", JobEvent.id > (launched or 0))
        .order_by(JobEvent.id.desc()).limit(1))


LEASE = "scheduler"
SUBMIT_GRACE_S = 90.0
"""How long a job recorded as starting may be missing from Ray before it is taken as never
submitted: longer than a submission can take (the launcher waits up to 60 s for a new head's
job agent), so a scheduler that lost its lease mid-submission is not raced."""


def submission_id(job: Job) -> str:
    """The Ray job id of a job's launch: its own id, with the restart's number after a restart."""
    return job.id if not job.restarts else f"{job.id}-restart-{job.restarts}"


def next_job(queued: list[Job], live: dict[str, int], quotas: dict[str, int], at) -> Job | None:
    """The job to start next, from `queued` in (priority desc, age) order: among teams below their
    quota with a job out of its backoff, the one with the fewest live jobs (then the oldest
    waiting job); its first eligible job. A team's priorities order its own jobs only."""
    heads: dict[str, Job] = {}
    for job in queued:
        if job.team_id in heads or live.get(job.team_id, 0) >= quotas.get(job.team_id, 0):
            continue
        if job.not_before is not None and job.not_before.astimezone(UTC) > at:
            continue  # a restart still in its backoff
        heads[job.team_id] = job
    if not heads:
        return None
    return min(heads.values(), key=lambda j: (live.get(j.team_id, 0), j.created_at.astimezone(UTC)))


class Scheduler:
    def __init__(self, sessions, launcher, settings):
        self.sessions, self.launcher, self.settings = sessions, launcher, settings
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False

    def elect(self) -> bool:
        """Take or renew the scheduler lease: whether this process schedules now."""
        with self.sessions() as session:
            leading = hold_lease(session, LEASE, self.holder, self.settings.scheduler_lease_s)
        if leading != self.leading:
            log.info("%s scheduling (%s)", "now" if leading else "no longer", self.holder)
        self.leading = leading
        return leading

    def resign(self) -> None:
        if self.leading:
            with self.sessions() as session:
                release_lease(session, LEASE, self.holder)
            self.leading = False

    def tick(self) -> None:
        """Reconcile live jobs, then start queued ones, each phase only while this process holds
        the lease (a slow reconcile must not let a second scheduler start jobs beside it)."""
        if self.elect():
            self.reconcile()
        if self.elect():
            self.start_queued()

    def reconcile(self) -> None:
        """Correct every live job's record from Ray: finished, failed, stopped, or vanished."""
        with self.sessions() as session:
            for job in session.scalars(select(Job).where(Job.state.in_([s.value for s in LIVE]))).all():
                if not job.ray_job_id:  # recorded live with no Ray job (a store from before ids were fixed)
                    self._never_submitted(session, job)
                    session.commit()
                    continue
                try:
                    status = self.launcher.status(job.ray_job_id)
                except Exception as exc:  # noqa: BLE001 - the cluster does not answer: say so on the job
                    if _last_service_event(session, job) != "cluster_unreachable":
                        logic.add_event(session, job, "cluster_unreachable", "the Ray cluster does not answer "
                                        f"({type(exc).__name__}); the job is checked again when it does")
                        session.commit()
                    continue
                if _last_service_event(session, job) == "cluster_unreachable":
                    logic.add_event(session, job, "cluster_reachable", "the Ray cluster answers again")
                    session.commit()
                if status.state in ("PENDING", "RUNNING") and self._past_wall_clock(session, job):
                    session.commit()
                    continue
                if status.state == "RUNNING" and job.state == JobState.starting:
                    continue  # the trainer marks it running when it reports in
                if status.state == "MISSING" and job.state == JobState.starting:
                    self._never_submitted(session, job)
                elif status.state == "MISSING":
                    error = f"the Ray job {job.ray_job_id} no longer exists (the cluster restarted?)"
                    if not self._restart(session, job, error, ""):  # resumed from its checkpoint, if it may
                        logic.transition(session, job, JobState.failed, "vanished from Ray", error=error)
                elif status.state in RAY_TERMINAL:
                    target = RAY_TERMINAL[status.state]
                    error = None
                    if target == JobState.failed:
                        error = without_paths(status.message + "\n" + self.launcher.logs_tail(job.ray_job_id))
                        if self._restart(session, job, error, status.message):
                            session.commit()
                            continue
                    logic.transition(session, job, target, f"Ray reports the job {status.state.lower()}", error)
                session.commit()

    def _restart(self, session, job: Job, error: str, ray_message: str) -> bool:
        """Queue a job that the cluster failed again, to resume from its checkpoint after its
        backoff; False when it may not (its own failure, or no restarts left)."""
        schedule = job.spec.get("schedule", {})
        allowed = int(schedule.get("max_restarts", 0))
        if not cluster_failure(ray_message) or job.restarts >= allowed:
            return False
        job.restarts += 1
        wait_s = float(schedule.get("restart_backoff_s", 5.0)) * 2 ** (job.restarts - 1)
        job.not_before = now() + timedelta(seconds=wait_s)
        reason = _reported_failure(session, job) or (error.splitlines() or ["the Ray job failed"])[0]
        logic.add_event(session, job, "restart", f"restart {job.restarts} of {allowed}, from the last checkpoint "
                        f"in {wait_s:g} s: {reason}", {"attempt": job.restarts, "reason": reason, "wait_s": wait_s})
        logic.transition(session, job, JobState.queued, f"queued again for restart {job.restarts}")
        job.ray_job_id = None
        return True

    def _never_submitted(self, session, job: Job) -> None:
        """A job recorded as starting that Ray never got (the service stopped between recording
        the launch and submitting it): queued again, to be submitted under the same id. One
        recorded as running with no Ray job cannot be told apart from a lost one: failed."""
        if job.state == JobState.starting:
            launched = session.scalar(select(func.max(JobEvent.created_at)).where(
                JobEvent.job_id == job.id, JobEvent.kind == JobState.starting.value))
            if launched is not None and (now() - launched).total_seconds() < SUBMIT_GRACE_S:
                return  # another scheduler may still be submitting it (its lease ran out meanwhile)
            logic.transition(session, job, JobState.queued, "queued again: the service stopped before Ray got the job")
            job.ray_job_id = None
        else:
            logic.transition(session, job, JobState.failed, "no Ray job recorded",
                             error="the service has no record of the Ray job running this job")

    def _past_wall_clock(self, session, job: Job) -> bool:
        """Stop a job that has run past its wall-clock limit (its spec's, at most the service's),
        counted from when it first started running (a job still waiting for its actors is bounded
        by `schedule.placement_timeout_s`)."""
        limit = min(filter(None, [self.settings.max_job_wall_clock_s,
                                  job.spec.get("schedule", {}).get("max_wall_clock_s")]))
        if job.started_at is None or (now() - job.started_at).total_seconds() <= limit:
            return False
        self.launcher.stop(job.ray_job_id)
        logic.transition(session, job, JobState.failed, "stopped at its wall-clock limit",
                         error=f"the job ran past its wall-clock limit of {limit:g} s (schedule.max_wall_clock_s, "
                               "at most the service's FLYWHEEL_MAX_JOB_WALL_CLOCK_S) and was stopped")
        return True

    def start_queued(self) -> None:
        """Start queued jobs while the cluster has room: each time the next job of the team with
        the fewest live jobs (the fair share), within a team by its own priorities, then age."""
        with self.sessions() as session:
            live = dict(session.execute(select(Job.team_id, func.count()).where(
                Job.state.in_([s.value for s in LIVE])).group_by(Job.team_id)).all())
            queued = session.scalars(select(Job).where(Job.state == JobState.queued)
                                     .order_by(Job.priority.desc(), Job.created_at)).all()
            quotas = dict(session.execute(select(Team.id, Team.max_concurrent_jobs)).all())
            while sum(live.values()) < self.settings.max_running_jobs:
                job = next_job(queued, live, quotas, now())
                if job is None:
                    return
                queued.remove(job)
                live[job.team_id] = live.get(job.team_id, 0) + 1
                self._launch(session, job)

    def _launch(self, session, job: Job) -> None:
        # The Ray id is recorded before Ray is asked, so a service that stops in between finds out
        # on its next start whether Ray has the job (`reconcile`), and never launches it twice.
        token, token_hash = new_job_token()
        job.report_token_hash, job.ray_job_id = token_hash, submission_id(job)
        logic.transition(session, job, JobState.starting, "submitted to Ray")
        session.commit()
        try:
            self.launcher.submit(job.id, logic.launch_spec(job), self.settings.report_url, token, job.ray_job_id)
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the service goes on
            log.warning("launch of job %s failed", job.id, exc_info=exc)
            logic.transition(session, job, JobState.failed, "launch failed",
                             error=without_paths(f"launch failed: {type(exc).__name__}: {str(exc)[:500]}"))
        session.commit()

    def on_shutdown(self, head, stop_jobs: bool) -> None:
        """The service is stopping. Jobs outlive it: with any live, the local head stays up (they
        report into their buffer, and the next start adopts the head and reconciles them);
        `stop_jobs` cancels them first. With none, the head is stopped."""
        with self.sessions() as session:
            live = session.scalars(select(Job).where(Job.state.in_([s.value for s in LIVE]))).all()
            if live and not stop_jobs:
                log.warning("leaving the local Ray head at %s running for %d live job(s); the next start "
                            "adopts it (flywheel serve --stop-jobs ends them instead)", head.address, len(live))
                return
            for job in live:
                if job.ray_job_id:
                    self.launcher.stop(job.ray_job_id)
                logic.transition(session, job, JobState.cancelled, "cancelled: the service stopped with --stop-jobs")
            session.commit()
        head.stop(grace_s=5)  # nothing of it is needed any more: SIGTERM stops the service promptly

    async def run_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # noqa: BLE001 - one bad tick must not stop scheduling
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.settings.scheduler_interval_s)
