"""Pinning actor processes to cores on a local CPU run.

Left to the scheduler, two busy actors migrate between cores and each runs about a quarter
slower (measured on the 2-core CI machine: two parallel rollouts 0.125 s each unpinned, 0.097 s
pinned). So each actor gets a slice of the cores of its own, `threads` wide, and runs that many
torch threads. The synchronous loop runs one side at a time: the rollout workers split the
machine, then the learner ranks split it again (worker i and rank i share cores). With
`max_staleness > 0` both sides compute at once, so workers and ranks split it between them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CoreShare:
    worker_threads: int
    rank_threads: int
    first_rank_slot: int
    """Rank r's slice is slot `first_rank_slot + r` (worker i's is slot i)."""


def threads_each(actors: int, cores: int) -> int:
    """Threads for each of `actors` actors that split `cores` cores (one at least)."""
    return max(1, cores // actors)


def share_cores(workers: int, ranks: int, overlap: bool, cores: int) -> CoreShare:
    """How `workers` rollout workers and `ranks` learner ranks split `cores` cores; `overlap`:
    the two sides compute at the same time."""
    if overlap:
        each = threads_each(workers + ranks, cores)
        return CoreShare(each, each, workers)
    return CoreShare(threads_each(workers, cores), threads_each(ranks, cores), 0)


def local_core_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pin_to_core(slot: int | None, threads: int | None = 1) -> None:
    """Use `threads` torch threads (None: leave it) and, when `slot` is given, run only on the
    `threads` cores from `slot × threads` on (mod the cores)."""
    if threads:
        torch.set_num_threads(threads)
    if slot is None or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    width = min(threads or 1, len(cores))
    os.sched_setaffinity(0, {cores[(slot * width + k) % len(cores)] for k in range(width)})


def local_cpu_cores() -> bool:
    """Whether this job runs on a Ray the driver started itself, without GPUs (pinning is ours to do)."""
    return not os.environ.get("RAY_ADDRESS") and not torch.cuda.is_available()
