"""What the CLI's commands share: an HTTP client for the service (FLYWHEEL_URL, FLYWHEEL_API_KEY),
its error answers printed field by field, and tables printed at their natural width."""

from __future__ import annotations

import os
from typing import Any

import httpx
import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

console = Console()


def client() -> httpx.Client:
    key = os.environ.get("FLYWHEEL_API_KEY")
    if not key:
        console.print("set FLYWHEEL_API_KEY (flywheel admin create-key TEAM prints one)", style="red")
        raise typer.Exit(2)
    return httpx.Client(base_url=os.environ.get("FLYWHEEL_URL", "http://127.0.0.1:8000"),
                        headers={"Authorization": f"Bearer {key}"}, timeout=60)


def check(response: httpx.Response, where: Any = None) -> Any:
    """The answer's JSON, or exit 1 printing the error; `where(field)` may rename a field (the
    trace importer turns `traces.3.messages` into the file's line)."""
    if response.is_success:
        return response.json()
    err = response.json().get("error", {})
    rename = where or (lambda field: field)
    message = err.get("message")
    if where and err.get("field"):
        message = f"{rename(err['field'])}: {message.split(': ', 1)[-1]}"
    console.print(f"error {response.status_code} {err.get('code')}: {message}", style="red")
    for row in err.get("errors", [])[1:]:
        console.print(f"  {rename(row['field'])}: {row['message']}", style="red")
    raise typer.Exit(1)


def names_table(name: str, *headers: str) -> Table:
    """A compact table: a column of names, then right-aligned values."""
    table = Table(name, box=box.SIMPLE_HEAD, pad_edge=False)
    for header in headers:
        table.add_column(header, justify="right")
    return table


def show(table: Table) -> None:
    """Print a table at its natural width, even piped or on an 80-column terminal: a wide table
    wraps in the terminal rather than having its names and numbers cut to `form…`."""
    width = Measurement.get(console, console.options.update_width(10_000), table).maximum
    Console(width=max(console.width, width), file=console.file).print(table)
