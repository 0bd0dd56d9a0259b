"""What every run of a job does around its steps, shared by the training loop (`trainer.loop.train`)
and the outcome model's (`trainer.outcome_model.fit`): find the checkpoint to resume from, start
the actors, open the wandb run and say `started`; after each step log it everywhere and
checkpoint on schedule; at the end say `finished` with the export folder; on any failure close
the wandb run as failed and say `failed`; and always stop the actors.

    with job_run(spec, start_actors, reporter, echo) as (run, actors):
        run.start("training from step 1")
        for step in ...:
            run.step_done(step, metrics, line)
            if run.checkpoint_due(step, last):
                run.checkpointed(step, checkpoint.save(...))
        return run.finish(export_dir)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from trainer.actors.cluster import connect
from trainer.driver import checkpoint
from trainer.driver.reporting import NullReporter
from trainer.driver.tracking import Tracker
from trainer.spec import JobSpec
from trainer.spec.reports import (
    MAX_MESSAGE,
    CheckpointData,
    CheckpointReport,
    FailedReport,
    FinishedData,
    FinishedReport,
    RunData,
    StartedReport,
    StepData,
    StepReport,
)

log = logging.getLogger("flywheel.trainer")


@dataclass
class RunResult:
    run_dir: Path
    steps_done: int
    export_dir: Path | None
    checkpoint_dir: Path
    wandb: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    """Held-out evaluation by phase: `before` (after any warm start) and `after` (the end)."""


class JobRun:
    """One run of a job: where it resumes from, its wandb run, its reports and its history."""

    def __init__(self, spec: JobSpec, reporter, echo: Callable[[str], None]):
        self.spec, self.reporter, self.echo = spec, reporter, echo
        self.checkpoint_dir = spec.run_dir / "checkpoints"
        self.resume = checkpoint.latest(self.checkpoint_dir)
        """(tag, loop state) of the last checkpoint, or None for a fresh run."""
        self.state = self.resume[1] if self.resume else checkpoint.LoopState(0, 0, 0, spec.schedule.seed)
        self.tracker: Tracker | None = None
        self.history: list[dict[str, float]] = []
        self.evaluations: dict[str, dict[str, float]] = {}

    def start(self, message: str) -> Tracker:
        """Open the wandb run (resuming its step count) and tell the control plane."""
        self.tracker = Tracker(self.spec.logging, self.spec.run_dir, self.spec.name, self.spec.model_dump(),
                               self.state.step)
        self.reporter.send(StartedReport(message=message, data=RunData(wandb=self.tracker.location)))
        return self.tracker

    def step_done(self, step: int, metrics: dict[str, float], line: str) -> None:
        """A step's metrics to wandb, the history, the log and the control plane."""
        self.tracker.log(metrics, step)
        self.history.append(metrics)
        self.echo(line)
        self.reporter.send(StepReport(message=line, data=StepData(step=step, metrics=metrics)))

    def checkpoint_due(self, step: int, last: int) -> bool:
        interval = self.spec.schedule.checkpoint_interval
        return bool(interval and step % interval == 0) or step == last

    def checkpointed(self, step: int, path: Path) -> None:
        self.reporter.send(CheckpointReport(message=f"checkpoint at step {step}",
                                            data=CheckpointData(step=step, path=str(path))))

    def finish(self, export_dir: Path | None) -> RunResult:
        """Close the wandb run, tell the control plane where the export is, and sum the run up."""
        step = self.state.step
        self.tracker.summary({"steps_done": step})
        self.tracker.finish()
        self.reporter.send(FinishedReport(message=f"stopped after step {step}", data=FinishedData(
            export_dir=str(export_dir) if export_dir else None, wandb=self.tracker.location)))
        return RunResult(self.spec.run_dir, step, export_dir, self.checkpoint_dir, self.tracker.location,
                         self.history, self.evaluations)

    def failed(self, exc: BaseException) -> None:
        if self.tracker is not None:
            self.tracker.finish(exit_code=1)
        message = f"{type(exc).__name__}: {exc}"
        if len(message) > MAX_MESSAGE:  # the report's own limit: cut, so the report never replaces the error
            message = message[:MAX_MESSAGE - 20] + " … (cut)"
        self.reporter.send(FailedReport(message=message))


@contextmanager
def job_run(spec: JobSpec, start_actors: Callable, reporter=None,
            echo: Callable[[str], None] | None = None) -> Iterator[tuple[JobRun, object]]:
    """The run and its actors; a failure inside is recorded and raised again, and the actors
    are always stopped."""
    run = JobRun(spec, reporter or NullReporter(), echo or log.info)
    connect()
    actors = start_actors(spec)
    try:
        yield run, actors
    except BaseException as exc:
        run.failed(exc)
        raise
    finally:
        actors.shutdown()
