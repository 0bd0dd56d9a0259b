"""The outcome model's data: which traces it learns from and which it is measured on, each as the
token ids of its whole conversation and a binary label (`algorithm.label` in `algorithm.positive`).

The held-out side is chosen by a hash of each trace's id, not by position, so a trace stays on its
side whatever else the snapshot holds, and a later snapshot that grew never measures the model on
a trace it learned from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from environments.base import Task
from rewards.outcome_model import conversation_ids


class OutcomeLabelError(ValueError):
    """Traces an outcome model cannot be fitted on; `field` is the spec field to change."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass
class Labelled:
    """One trace as the classifier reads it."""

    id: str
    ids: list[int]
    positive: bool


def is_held_out(trace_id: str, share: float) -> bool:
    """Whether a trace is on the held-out side: its id's hash, read as a number in [0, 1)."""
    return int.from_bytes(hashlib.sha256(trace_id.encode()).digest()[:8], "big") / 2**64 < share


def split(tasks: list[Task], algorithm) -> tuple[list[tuple[Task, bool]], list[tuple[Task, bool]]]:
    """The labelled traces, (train, held out); refuses traces a classifier cannot be fitted or
    measured on (no trace with the label, one class only, a held-out side without both)."""
    labelled = [(t, t.columns[algorithm.label] in algorithm.positive) for t in tasks
                if t.columns.get(algorithm.label) is not None]
    if not labelled:
        seen = sorted({k for t in tasks for k in t.columns if not k.startswith("metadata.") and k != "trace_id"})
        raise OutcomeLabelError("algorithm.label", f"no trace has the label {algorithm.label!r}; the traces' outcome "
                                                   f"labels are {seen}")
    positives = sum(y for _, y in labelled)
    if positives in (0, len(labelled)):
        values = sorted({str(t.columns[algorithm.label]) for t, _ in labelled})[:20]
        raise OutcomeLabelError("algorithm.positive", f"all {len(labelled)} labelled traces are "
                                f"{'positive' if positives else 'negative'} ({algorithm.label!r} takes {values}); "
                                "a classifier needs both outcomes")
    train = [(t, y) for t, y in labelled if not is_held_out(t.id, algorithm.holdout)]
    held = [(t, y) for t, y in labelled if is_held_out(t.id, algorithm.holdout)]
    for side, rows in (("held-out", held), ("training", train)):
        if len({y for _, y in rows}) < 2:
            raise OutcomeLabelError("algorithm.holdout", f"the {side} traces ({len(rows)} of {len(labelled)}) do not "
                                    "hold both outcomes: it needs more traces, or another holdout share")
    return train, held


def encode(tokenizer, rows: list[tuple[Task, bool]], max_tokens: int) -> list[Labelled]:
    """Each trace's whole conversation (prompt and logged reply) as the classifier reads it."""
    return [Labelled(t.id, conversation_ids(tokenizer, t.prompt + t.logged.messages, max_tokens), y) for t, y in rows]
