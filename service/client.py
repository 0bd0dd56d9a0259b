"""What the CLI's commands and the demos share: an HTTP client for the service (FLYWHEEL_URL,
FLYWHEEL_API_KEY), its error answers printed field by field, tables printed at their natural
width, and the wait for a process's readiness route."""

from __future__ import annotations

import os
import subprocess
import time
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


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    """Until `url` answers 200; exits naming `what` if its process ends or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} while starting")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} at {url} was not ready after {timeout_s:.0f} s")
