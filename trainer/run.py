"""Run a job from a run file on the local Ray (or `RAY_ADDRESS`):

    python -m trainer.run configs/demo.toml
    python -m trainer.run configs/demo.toml --set schedule.steps=5 --set learner.ranks=1

A run whose folder already holds a checkpoint resumes from it. Exit status: 0 on success, 2 for
an invalid spec, 3 when the cluster failed under the run (an actor or node died: the control
plane may restart it from its checkpoint, `schedule.max_restarts`), 1 for any other failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from trainer.logs import configure_logging
from trainer.spec import SpecError, load_spec, parse_overrides

EXIT_CLUSTER_FAILURE = 3
CLUSTER_FAILURE = "the cluster failed under the run"
log = logging.getLogger("flywheel.trainer")


def _take_token(path: str | None) -> str | None:
    """The report token, removed from where it came from before any team code is imported: its
    file is deleted and the variable dropped, so a reward worker or dataset loader cannot find it."""
    token = os.environ.pop("FLYWHEEL_REPORT_TOKEN", None)
    if path is not None:
        file = Path(path)
        token = file.read_text().strip()
        file.unlink()
    return token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a .toml, .yaml or .json run file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field by its dotted path")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this step (for testing resume)")
    parser.add_argument("--report-url", default=None, help="control plane to report to (token: --token-file, "
                        "or $FLYWHEEL_REPORT_TOKEN)")
    parser.add_argument("--token-file", default=None, help="file holding the job's report token; read and "
                        "deleted at start, before any team code runs")
    parser.add_argument("--job-id", default=None, help="the control plane's id of this job")
    args = parser.parse_args(argv)
    token = _take_token(args.token_file)
    configure_logging(args.job_id or os.path.basename(args.config))  # the control plane keeps the log's tail
    try:
        spec = load_spec(args.config, parse_overrides(args.set))
    except SpecError as exc:
        log.error("%s", exc)
        return 2
    if spec.algorithm.fits_classifier:  # heavy imports only once the spec is known to be good
        from trainer.outcome_model import fit as train
    else:
        from trainer.loop import train

    reporter = None
    if args.report_url:
        from trainer.driver.reporting import HttpReporter

        reporter = HttpReporter(args.report_url, args.job_id, token)
    import ray.exceptions

    from trainer.actors.rollout_worker import WeightsNotDelivered

    # What a dead actor, worker process or node raises in the driver: the run itself was sound.
    cluster_failures = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError, WeightsNotDelivered)
    try:
        result = train(spec, stop_after=args.stop_after, reporter=reporter)
    except SpecError as exc:
        log.error("%s", str(exc).replace("invalid spec", f"invalid {args.config}", 1))
        return 2
    except cluster_failures as exc:
        log.error("%s: %s: %s", CLUSTER_FAILURE, type(exc).__name__, exc)
        return EXIT_CLUSTER_FAILURE
    finally:
        if reporter is not None:
            reporter.close()
    if result.evaluations:
        from rich.console import Console

        from trainer.spec.results import result_table

        Console().print(result_table({phase: {"step": 0 if phase == "before" else result.steps_done, "metrics": m}
                                      for phase, m in result.evaluations.items()}))
    print(f"\nrun folder:     {result.run_dir}")
    print(f"checkpoints:    {result.checkpoint_dir}")
    print(f"exported model: {result.export_dir or '(not yet: the run stopped before its last step)'}")
    print(f"wandb run:      {result.wandb or '(disabled)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
