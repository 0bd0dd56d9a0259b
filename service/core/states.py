"""Job states and the only place their transitions are checked.

    queued → starting → running → succeeded | failed | cancelled
    (queued and starting may also go straight to failed or cancelled)
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    queued = "queued"
    starting = "starting"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = {JobState.succeeded, JobState.failed, JobState.cancelled}
LIVE = {JobState.starting, JobState.running}

ALLOWED: dict[JobState, set[JobState]] = {
    JobState.queued: {JobState.starting, JobState.failed, JobState.cancelled},
    # Back to queued: restarted from its checkpoint after an infrastructure failure.
    JobState.starting: {JobState.running, JobState.succeeded, JobState.failed, JobState.cancelled, JobState.queued},
    JobState.running: {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.queued},
    JobState.succeeded: set(),
    JobState.failed: set(),
    JobState.cancelled: set(),
}


class IllegalTransition(Exception):
    def __init__(self, current: JobState, target: JobState):
        self.current, self.target = current, target
        super().__init__(f"a {current.value} job cannot become {target.value}")


def check_transition(current: JobState | str, target: JobState | str) -> JobState:
    current, target = JobState(current), JobState(target)
    if target not in ALLOWED[current]:
        raise IllegalTransition(current, target)
    return target
