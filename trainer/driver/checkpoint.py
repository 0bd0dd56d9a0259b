"""Resumable checkpoints: DeepSpeed's own (weights and optimizer state, every rank) plus the loop
state the driver owns, in `run_dir/checkpoints/step_<k>/`.

The loop state is the step, the data position (epoch and cursor of the seeded task order) and
the seed; every random stream of a run is derived from (seed, step, worker), so these numbers
are the whole RNG state and a resumed run samples exactly what an uninterrupted one would.
`latest.json` is written last, so a checkpoint cut off half-way is never resumed from.

With asynchronous rollout the batches already in flight for the next steps are part of the state:
they are awaited and saved as they are (`in_flight.pkl`: samples and scores), and a resumed run
trains on them first, as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.actors.cluster import get_all

LATEST = "latest.json"
IN_FLIGHT = "in_flight.pkl"


@dataclass
class LoopState:
    step: int
    data_epoch: int
    data_cursor: int
    seed: int


CRITIC = "critic"  # PPO's value model checkpoints beside the policy's, under this folder


def save(learners, directory: Path, state: LoopState, critics=(), in_flight=()) -> Path:
    """Save every rank's DeepSpeed state (and the critic's), the rollout batches in flight, then
    the loop state, then mark it complete."""
    tag = f"step_{state.step}"
    get_all([learner.save_checkpoint.remote(str(directory), tag) for learner in learners]
            + [critic.save_checkpoint.remote(str(directory / CRITIC), tag) for critic in critics])
    if in_flight:
        (directory / tag / IN_FLIGHT).write_bytes(pickle.dumps(list(in_flight)))
    (directory / tag / "loop_state.json").write_text(json.dumps(asdict(state), indent=2))
    tmp = directory / f".{LATEST}.tmp"
    tmp.write_text(json.dumps({"tag": tag, "step": state.step}))
    os.replace(tmp, directory / LATEST)
    return directory / tag


def latest(directory: Path) -> tuple[str, LoopState] | None:
    """The newest complete checkpoint under `directory`, if any."""
    marker = directory / LATEST
    if not marker.exists():
        return None
    tag = json.loads(marker.read_text())["tag"]
    state = LoopState(**json.loads((directory / tag / "loop_state.json").read_text()))
    return tag, state


def in_flight(directory: Path, tag: str) -> list:
    """The rollout batches that were in flight at checkpoint `tag` (`trainer.driver.pipeline.Batch`)."""
    path = directory / tag / IN_FLIGHT
    return pickle.loads(path.read_bytes()) if path.exists() else []  # the job's own file, written by save()


def restore(learners, directory: Path, tag: str, critics=()) -> None:
    get_all([learner.load_checkpoint.remote(str(directory), tag) for learner in learners]
            + [critic.load_checkpoint.remote(str(directory / CRITIC), tag) for critic in critics])
