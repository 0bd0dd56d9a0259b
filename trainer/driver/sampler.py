"""Seeded, resumable task order: epoch e visits the tasks in a permutation fixed by (seed, e)."""

from __future__ import annotations

import random

from environments.base import Task


class TaskSampler:
    def __init__(self, tasks: list[Task], seed: int, epoch: int = 0, cursor: int = 0):
        if not tasks:
            raise ValueError("the environment produced no tasks")
        self.tasks, self.seed = tasks, seed
        self.epoch, self.cursor = epoch, cursor
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next(self, n: int) -> list[Task]:
        out = []
        while len(out) < n:
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self.tasks[self._order[self.cursor]])
            self.cursor += 1
        return out
