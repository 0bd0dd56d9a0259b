"""The rollout worker: a Ray actor that owns one engine, samples groups for its share of the
tasks, and takes new weights from the learner after every step (a state dict through the object
store, or, with vLLM on GPUs, a broadcast the learner drives through `weight_transfer_rpc`)."""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from environments.base import Task
from trainer.actors.affinity import pin_to_core
from trainer.actors.episodes import run_episodes
from trainer.chat import format_prompt
from trainer.engines import build_engine
from trainer.types import Sample, SamplingParams


class WeightsNotDelivered(RuntimeError):
    """The weights of the last step never reached this worker: the learner rank that held them
    died before handing them over (so the run failed for the cluster's sake, not its own)."""


class RolloutWorker:
    """Wrapped with `ray.remote` by the loop; plain class so it is testable in-process."""

    def __init__(self, engine: str, model_path: str, dtype: str, threads: int | None = 1, core: int | None = None,
                 environment: tuple[str, dict] | None = None, vllm: dict | None = None):
        pin_to_core(core, threads)
        if engine == "vllm" and core is not None:  # vLLM's CPU threads stay on this worker's core
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        self.engine = build_engine(engine, model_path, dtype, vllm)
        self.version = 0
        self.env = None
        if environment is not None:
            from environments import build

            env = build(*environment)
            env = getattr(env, "rollouts", None) or env  # traces: episodes are the held-out environment's
            self.env = env if getattr(env, "multi_turn", False) else None

    def generate(self, tasks: list[Task], group_offset: int, group_size: int, sampling: SamplingParams,
                 seed: int, weights_version: int | None = None) -> list[Sample]:
        if weights_version is not None and self.version != weights_version:
            raise WeightsNotDelivered(f"rollout worker holds weights v{self.version}, the loop expected "
                                      f"v{weights_version}: the last weight update did not arrive")
        start = time.time()
        samples = self._generate(tasks, group_offset, group_size, sampling, seed)
        window = (start, time.time())
        samples = [dataclasses.replace(s, sampled_at=window) for s in samples]
        if hasattr(self.engine, "sleep"):  # a vLLM engine sharing its GPU hands it to the learner now
            self.engine.sleep()
        return samples

    def _generate(self, tasks: list[Task], group_offset: int, group_size: int, sampling: SamplingParams,
                  seed: int) -> list[Sample]:
        tok = self.engine.tokenizer()
        prompts = [format_prompt(tok, t.prompt) for t in tasks]
        if self.env is not None:
            episodes = run_episodes(self.engine, self.env, tasks, prompts, group_size, sampling, seed,
                                    self.env.config.max_turns)
            return [Sample(task, group_offset + i, prompt, e.completion(), self.version, e.outcome, e.messages)
                    for i, (task, prompt, group) in enumerate(zip(tasks, prompts, episodes, strict=True))
                    for e in group]
        groups = self.engine.generate(prompts, group_size, sampling, seed)
        return [Sample(task, group_offset + i, prompt, c, self.version)
                for i, (task, prompt, group) in enumerate(zip(tasks, prompts, groups, strict=True))
                for c in group]

    def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        self.engine.load_weights(state_dict)
        self.version = version
        return version

    def weight_transfer_rpc(self, method: str, kwargs: dict) -> None:
        """One phase of vLLM's native weight transfer, driven by learner rank 0."""
        self.engine.rpc(method, kwargs)

    def set_version(self, version: int) -> None:
        """The step whose weights a completed transfer delivered."""
        self.version = version
