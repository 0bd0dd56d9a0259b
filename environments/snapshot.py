"""The trace snapshot format: one Parquet file of a team's logged conversations, the frozen data a
job on the `traces` environment learns from. The control plane writes it when a job's selection
is frozen (`service/traces/snapshot.py`) and `flywheel traces export --parquet` writes it by hand;
the `traces` environment and the outcome model read it.

One row per trace, every column a string: `trace_id`, `model`, `model_version`, `messages`,
`outcome` and `metadata` (the last three as JSON text), `created_at`. A snapshot is named by its
content hash (`snapshot_hash`), which the control plane records on the job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

COLUMNS = ("trace_id", "model", "model_version", "messages", "outcome", "metadata", "created_at")


class SnapshotError(ValueError):
    """A file that is not a readable snapshot: missing, not Parquet, or without the columns."""


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once in UTC: expected a time from 0001-01-01 to 9999-12-31 UTC") from None


UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
"""A time with its zone, kept in UTC (a time the zone pushes out of the calendar is refused)."""


class TraceSelection(BaseModel):
    """Which of the team's traces a job learns from, as `GET /v1/traces` filters them."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str | None = Field(default=None, min_length=1, max_length=200)
    model_version: str | None = Field(default=None, min_length=1, max_length=100)
    outcome: list[Annotated[str, Field(max_length=300, pattern=r"^[^:]+(:[\s\S]+)?$")]] = Field(default_factory=list,
                                                                                          max_length=20)
    """`KEY:VALUE` labels every trace must have (a bare VALUE is the `outcome` label)."""
    since: UtcTime | None = None
    until: UtcTime | None = None
    limit: int | None = Field(default=None, ge=1, le=10_000_000)
    """At most this many traces, the most recent ones."""


def write_snapshot(traces: Iterable[dict[str, Any]], path: str | Path) -> tuple[int, str]:
    """Write traces (as the API gives them: `messages`, `outcome` and `metadata` as JSON values) to
    a Parquet snapshot; returns how many, and the file's content hash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"trace_id": t["trace_id"], "model": t["model"], "model_version": t.get("model_version"),
             "messages": json.dumps(t["messages"]), "outcome": json.dumps(t["outcome"]) if t.get("outcome") else None,
             "metadata": json.dumps(t.get("metadata") or {}), "created_at": str(t.get("created_at") or "")}
            for t in traces]
    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return len(rows), snapshot_hash(path)


def snapshot_hash(path: str | Path) -> str:
    """The snapshot's content hash (sha256 of the file), as recorded on the job."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The snapshot's rows, as dicts of its columns."""
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.is_file():
        raise SnapshotError(f"no such file: {path}")
    try:
        table = pq.read_table(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
        raise SnapshotError(f"{path}: not a Parquet file ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise SnapshotError(f"{path}: missing columns {missing} (expected {list(COLUMNS)})")
    return table.to_pylist()
