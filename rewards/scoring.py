"""Scoring a batch with several reward modules, each under its own time limit.

All modules run concurrently. A sync module runs in a daemon thread, so one that hangs past its
limit is abandoned instead of blocking the process on exit; an async module is cancelled. An
exception, a timeout, a wrong-length answer or a non-finite value marks the affected samples
*failed*: they are recorded with the traceback, counted, and left out of the advantage — never
scored 0. `None` from a module is "no opinion" and drops out of that sample's weighted sum.
"""

from __future__ import annotations

import asyncio
import math
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.base import RewardModule


@dataclass
class RewardFailure:
    """One module failing on a set of samples of a batch."""

    module: str
    indices: list[int]
    error: str
    timed_out: bool = False


@dataclass
class ScoreResult:
    """Per-sample totals and per-module components for one batch."""

    total: list[float]
    """Weighted sum of the modules' non-None values (0.0 for failed samples, which are masked)."""

    components: dict[str, list[float | None]]
    """Each module's raw value per sample; None for no opinion or failure."""

    failed: list[bool]
    """True where any module failed on the sample."""

    failures: list[RewardFailure] = field(default_factory=list)

    @staticmethod
    def concat(parts: Sequence[ScoreResult]) -> ScoreResult:
        """One result for the batches in order (failure indices shifted to match)."""
        merged = ScoreResult([], {name: [] for name in parts[0].components}, [], [])
        for part in parts:
            base = len(merged.total)
            merged.total += part.total
            merged.failed += part.failed
            for name, values in part.components.items():
                merged.components[name] += values
            merged.failures += [RewardFailure(f.module, [base + i for i in f.indices], f.error, f.timed_out)
                                for f in part.failures]
        return merged

    def take(self, rows: Sequence[int]) -> ScoreResult:
        """The result for these sample rows only, in this order."""
        where = {r: k for k, r in enumerate(rows)}
        failures = [RewardFailure(f.module, [where[i] for i in f.indices if i in where], f.error, f.timed_out)
                    for f in self.failures]
        return ScoreResult([self.total[r] for r in rows],
                           {name: [values[r] for r in rows] for name, values in self.components.items()},
                           [self.failed[r] for r in rows], [f for f in failures if f.indices])

    def failure_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.components}
        for f in self.failures:
            counts[f.module] += len(f.indices)
        return counts


def _in_daemon_thread(fn, kwargs: dict[str, Any]) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(setter, value):
        if not future.done():
            setter(value)

    def hand_back(setter, value):
        try:
            loop.call_soon_threadsafe(settle, setter, value)
        except RuntimeError:  # the batch timed the call out and its event loop has closed since
            pass

    def target():
        try:
            result = fn(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            hand_back(future.set_exception, exc)
        else:
            hand_back(future.set_result, result)

    threading.Thread(target=target, daemon=True, name="reward-call").start()
    return future


class _Raised(Exception):
    """What the module raised itself, with its traceback: kept apart from our own time limit,
    since a module may raise TimeoutError too (a regex past its match limit)."""


async def _call(module: RewardModule, kwargs: dict[str, Any]) -> Any:
    async def guarded():
        try:
            return await (module.fn(**kwargs) if module.is_async else _in_daemon_thread(module.fn, kwargs))
        except Exception as exc:  # noqa: BLE001 - recorded by _run_module
            raise _Raised(traceback.format_exc()) from exc

    return await asyncio.wait_for(guarded(), timeout=module.timeout_s)


async def _run_module(module: RewardModule, n: int, kwargs: dict[str, Any]
                      ) -> tuple[list[float | None], RewardFailure | None]:
    try:
        values = await _call(module, kwargs)
    except _Raised as exc:  # a failing module is recorded, never fatal to the batch
        return [None] * n, RewardFailure(module.name, list(range(n)), exc.args[0])
    except TimeoutError:
        return [None] * n, RewardFailure(module.name, list(range(n)),
                                         f"timed out after {module.timeout_s:g} s", timed_out=True)
    if not isinstance(values, Sequence) or len(values) != n:
        got = len(values) if isinstance(values, Sequence) else type(values).__name__
        return [None] * n, RewardFailure(module.name, list(range(n)),
                                         f"returned {got} values for {n} completions")
    out: list[float | None] = []
    bad: list[int] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = math.nan
        if math.isfinite(v):
            out.append(v)
        else:
            out.append(None)
            bad.append(i)
    failure = RewardFailure(module.name, bad, f"returned a non-finite or non-numeric value at {bad}") if bad else None
    return out, failure


async def score_async(modules: Sequence[RewardModule], prompts: list, completions: list,
                      completion_ids: list[list[int]], columns: dict[str, list]) -> ScoreResult:
    """Score one batch with every module concurrently (see the module docstring)."""
    n = len(completions)
    kwargs = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **columns}
    results = await asyncio.gather(*(_run_module(m, n, kwargs) for m in modules))
    components = {m.name: values for m, (values, _) in zip(modules, results, strict=True)}
    failures = [f for _, f in results if f is not None]
    failed = [False] * n
    for f in failures:
        for i in f.indices:
            failed[i] = True
    total = []
    for i in range(n):
        parts = [m.weight * components[m.name][i] for m in modules if components[m.name][i] is not None]
        total.append(0.0 if failed[i] else float(sum(parts)))
    return ScoreResult(total, components, failed, failures)


def score(modules: Sequence[RewardModule], prompts: list, completions: list,
          completion_ids: list[list[int]], columns: dict[str, list]) -> ScoreResult:
    """Blocking wrapper around `score_async`."""
    return asyncio.run(score_async(modules, prompts, completions, completion_ids, columns))
