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
import uuid
from datetime import timedelta

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
                if not job.ray_job_id:
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
                if status.state == "RUNNING" and job.state == JobState.starting:
                    continue  # the trainer marks it running when it reports in
                if status.state == "MISSING":
                    error = f"the Ray job {job.ray_job_id} no longer exists (the cluster restarted?)"
                    if not self._restart(session, job, error, ""):  # resumed from its checkpoint, if it may
                        logic.transition(session, job, JobState.failed, "vanished from Ray", error=error)
                elif status.state in RAY_TERMINAL:
                    target = RAY_TERMINAL[status.state]
                    error = None
                    if target == JobState.failed:
                        error = (status.message + "\n" + self.launcher.logs_tail(job.ray_job_id)).strip()
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

    def start_queued(self) -> None:
        with self.sessions() as session:
            live = len(session.scalars(select(Job.id).where(Job.state.in_([s.value for s in LIVE]))).all())
            queued = session.scalars(select(Job).where(Job.state == JobState.queued)
                                     .order_by(Job.priority.desc(), Job.created_at)).all()
            for job in queued:
                if live >= self.settings.max_running_jobs:
                    return
                if job.not_before is not None and job.not_before > now():
                    continue  # a restart still in its backoff
                team = session.get(Team, job.team_id)
                if logic.live_count(session, team.id) >= team.max_concurrent_jobs:
                    continue  # this team is at its quota; later teams' jobs may still start
                token, token_hash = new_job_token()
                job.report_token_hash = token_hash
                logic.transition(session, job, JobState.starting, "submitted to Ray")
                session.commit()
                try:
                    job.ray_job_id = self.launcher.submit(job.id, logic.launch_spec(job), self.settings.report_url, token)
                except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the service goes on
                    logic.transition(session, job, JobState.failed, "launch failed", error=f"launch failed: {exc}")
                session.commit()
                live += 1

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
        head.stop()

    async def run_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # noqa: BLE001 - one bad tick must not stop scheduling
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.settings.scheduler_interval_s)
