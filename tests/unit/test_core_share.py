"""How a local run's rollout workers and learner ranks split the cores, and the pinning itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.actors.affinity import CoreShare, share_cores

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("workers", "ranks", "overlap", "cores", "expected"), [
    (1, 1, False, 2, CoreShare(2, 2, 0)),  # one side at a time: each takes the machine
    (2, 2, False, 2, CoreShare(1, 1, 0)),  # worker i and rank i share core i
    (1, 1, True, 2, CoreShare(1, 1, 1)),   # at once: the worker core 0, the rank core 1
    (2, 2, True, 2, CoreShare(1, 1, 2)),   # more actors than cores: one thread each, slots wrap
    (1, 2, False, 8, CoreShare(8, 4, 0)),
    (2, 2, True, 8, CoreShare(2, 2, 2)),
])
def test_workers_and_ranks_split_the_cores(workers, ranks, overlap, cores, expected):
    assert share_cores(workers, ranks, overlap, cores) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
@pytest.mark.parametrize(("slot", "threads"), [(1, 1), (0, 2)])
def test_a_slot_pins_to_its_cores_and_sets_the_threads(slot, threads):
    """In a fresh process, as an actor would (once vLLM is imported, torch.set_num_threads is a no-op)."""
    cores = sorted(os.sched_getaffinity(0))
    code = ("import json, os, torch; from trainer.actors.affinity import pin_to_core; "
            f"pin_to_core({slot}, {threads}); print(json.dumps([sorted(os.sched_getaffinity(0)), torch.get_num_threads()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    width = min(threads, len(cores))
    expected = sorted({cores[(slot * width + k) % len(cores)] for k in range(width)})
    assert json.loads(out) == [expected, threads]
