"""How a local run's rollout workers and learner ranks split the cores, and the pinning itself."""

import os

import pytest
import torch

from trainer.actors.affinity import CoreShare, pin_to_core, share_cores


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
def test_a_slot_pins_to_its_cores_and_sets_the_threads():
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    cores = sorted(before)
    try:
        pin_to_core(1, 1)
        assert os.sched_getaffinity(0) == {cores[1 % len(cores)]} and torch.get_num_threads() == 1
        os.sched_setaffinity(0, before)
        pin_to_core(0, len(cores))
        assert os.sched_getaffinity(0) == set(cores) and torch.get_num_threads() == len(cores)
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)
