"""`flywheel traces`: import production logs (JSON Lines, one trace per line), export a selection,
and print the outcome rates by model version and day."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from environments.snapshot import write_snapshot
from service.client import check, client, console, names_table, show

traces = typer.Typer(help="Production traces: conversations and their outcomes.", no_args_is_help=True)

Model = Annotated[str | None, typer.Option(help="only this model's traces")]
Version = Annotated[str | None, typer.Option(help="only this model version's")]
Outcome = Annotated[list[str] | None, typer.Option(help="KEY:VALUE label (repeatable; a bare VALUE is the "
                                                        "`outcome` label)")]
Since = Annotated[str | None, typer.Option(help="ISO time with zone, inclusive")]
Until = Annotated[str | None, typer.Option(help="ISO time with zone, exclusive")]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


@traces.command("import")
def import_(file: Path, batch: Annotated[int, typer.Option(min=1, help="traces per request")] = 500) -> None:
    """Send FILE's traces (one JSON object per line) in batches. Each batch is stored whole or not
    at all; a trace already stored is skipped, so a failed import can simply be run again."""
    lines = [(n, line) for n, line in enumerate(file.read_text().splitlines(), 1) if line.strip()]
    stored = duplicates = 0
    with client() as c, _progress() as bar:
        task = bar.add_task(f"importing {file.name}", total=len(lines))
        for start in range(0, len(lines), batch):
            chunk = lines[start:start + batch]
            body = []
            for n, line in chunk:
                try:
                    body.append(json.loads(line))
                except json.JSONDecodeError as e:
                    _stop(f"{file}:{n}: not a JSON object ({e.msg})", stored)
            numbers = [n for n, _ in chunk]

            def where(field: str, numbers=numbers) -> str:
                m = re.match(r"traces\.(\d+)\.?(.*)", field or "")
                return f"{file}:{numbers[int(m[1])]}: {m[2] or 'trace'}" if m else field

            try:
                out = check(c.post("/v1/traces", json={"traces": body}, timeout=300), where)
            except typer.Exit:
                _stop(f"lines {numbers[0]}-{numbers[-1]} were not stored", stored)
            stored, duplicates = stored + out["stored"], duplicates + len(out["duplicates"])
            bar.advance(task, len(chunk))
    console.print(f"{stored} traces stored, {duplicates} already there")


def _stop(message: str, stored: int) -> None:
    console.print(message, style="red")
    console.print(f"{stored} traces stored before this; fix the file and run the import again (what is stored "
                  "is skipped)", style="red")
    raise typer.Exit(1)


@traces.command()
def export(output: Annotated[Path | None, typer.Option("--output", "-o", help="default: standard output")] = None,
           model: Model = None, model_version: Version = None, outcome: Outcome = None,
           pending: Annotated[bool | None, typer.Option(help="only traces without (or with) an outcome")] = None,
           since: Since = None, until: Until = None) -> None:
    """Write the selected traces as JSON Lines, in the order they happened; to a `.parquet` output,
    as the snapshot the `traces` environment trains on (its content hash is printed)."""
    params = {k: v for k, v in {"model": model, "model_version": model_version, "outcome": outcome,
                                "pending": pending, "since": since, "until": until, "limit": 1000}.items()
              if v is not None}
    if output is not None and output.suffix == ".parquet":
        count, digest = write_snapshot(_pages(params), output)
        console.print(f"{count} traces written to {output} (sha256 {digest})", style="dim")
        return
    out = output.open("w") if output else sys.stdout
    count = 0
    try:
        for trace in _pages(params):
            out.write(json.dumps(trace) + "\n")
            count += 1
    finally:
        if output:
            out.close()
    console.print(f"{count} traces" + (f" written to {output}" if output else ""), style="dim")


def _pages(params: dict) -> Iterator[dict]:
    """Every selected trace, page after page."""
    with client() as c:
        while True:
            page = check(c.get("/v1/traces", params=params))
            yield from page["traces"]
            if page["next_cursor"] is None:
                return
            params = {**params, "cursor": page["next_cursor"]}


@traces.command()
def stats(model: Model = None, model_version: Version = None, since: Since = None, until: Until = None,
          label: Annotated[str, typer.Option(help="the outcome label to count")] = "outcome") -> None:
    """Outcome rates by model version and day: the production dashboard."""
    params = {k: v for k, v in {"model": model, "model_version": model_version, "since": since, "until": until,
                                "label": label}.items() if v is not None}
    with client() as c:
        rows = check(c.get("/v1/traces/stats", params=params))["rows"]
    values = sorted({v for r in rows for v in r["values"]})
    numeric = any(r["mean"] is not None for r in rows)
    table = names_table("model", "version", "day", "traces", f"with {label}", *values, *(["mean"] if numeric else []))
    for r in rows:
        rates = [f"{r['rates'][v]:.1%}" if v in r["rates"] else "" for v in values]
        mean = [f"{r['mean']:.3g}" if r["mean"] is not None else ""] if numeric else []
        table.add_row(r["model"], r["model_version"] or "", r["day"], str(r["traces"]), str(r["labelled"]),
                      *rates, *mean)
    show(table)
