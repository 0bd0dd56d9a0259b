"""Multi-turn rollouts: batches of episodes against an environment (inside a rollout worker).

Every turn, the engine writes the assistant message for each live episode in one batch, the
environment answers each, and the episodes that are not done go round again. An episode becomes
one token sequence — the prompt, then the assistant's sampled tokens interleaved with the tokens
of the environment's replies — with a mask that is True only on sampled tokens, so what the
environment wrote never enters the loss.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from environments.base import Episode, Message, Step, Task
from trainer.chat import reply_ids
from trainer.engines import Engine
from trainer.types import Completion, SamplingParams


@dataclass
class Trajectory:
    """One episode as the learner and the rewards see it."""

    task: Task
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    """The conversation after the prompt: assistant turns and the environment's replies."""
    outcome: dict = field(default_factory=dict)
    truncated: bool = False

    def completion(self) -> Completion:
        text = next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")
        return Completion(self.token_ids, self.logprobs, text, self.truncated, self.mask)


def run_episodes(engine: Engine, env, tasks: list[Task], prompts_ids: list[list[int]], n: int,
                 sampling: SamplingParams, seed: int, max_turns: int = 50) -> list[list[Trajectory]]:
    """`n` episodes per task; returns them grouped by task."""
    tok = engine.tokenizer()
    trajs = [Trajectory(task, list(ids)) for task, ids in zip(tasks, prompts_ids, strict=True) for _ in range(n)]
    live = list(range(len(trajs)))
    start = time.perf_counter()
    for turn in range(max_turns):
        contexts = [trajs[i].prompt_ids + trajs[i].token_ids for i in live]
        outs = engine.generate(contexts, 1, sampling, seed + 7919 * turn)
        eos_sampled = {i: not c.truncated for i, (c,) in zip(live, outs, strict=True)}
        for i, (c,) in zip(live, outs, strict=True):
            t = trajs[i]
            t.token_ids += c.token_ids
            t.logprobs += c.logprobs
            t.mask += [True] * len(c.token_ids)
            t.truncated |= c.truncated
            t.messages.append({"role": "assistant", "content": c.text})
        steps = asyncio.run(_step_all(env, [trajs[i] for i in live], turn + 1))
        still = []
        for i, step in zip(live, steps, strict=True):
            t = trajs[i]
            if step.done:
                t.outcome = {**step.outcome, "latency_s": time.perf_counter() - start}
                continue
            ids = reply_ids(tok, t.task.prompt + t.messages, step.reply, eos_sampled=eos_sampled[i])
            t.token_ids += ids
            t.logprobs += [0.0] * len(ids)
            t.mask += [False] * len(ids)
            t.messages += step.reply
            still.append(i)
        live = still
        if not live:
            break
    for i in live:  # the environment never ended these: the turn budget did
        trajs[i].outcome = {"outcome": "unfinished", "turns": max_turns, "latency_s": time.perf_counter() - start}
    return [trajs[k * n:(k + 1) * n] for k in range(len(tasks))]


async def _step_all(env, trajs: list[Trajectory], turn: int) -> list[Step]:
    return await asyncio.gather(*(env.step(Episode(t.task, t.task.prompt + t.messages, turn)) for t in trajs))
