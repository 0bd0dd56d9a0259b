"""The warm start from the driver: supervised steps on demonstration conversations before RL.

A conversation is laid out token for token the way a multi-turn rollout lays it out (the prompt,
then each assistant turn followed by the template tokens of the replies), with the loss mask on
the assistant's own tokens, so the model learns exactly the sequences it will later sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from trainer.actors.cluster import JobActors, get_all
from trainer.chat import format_prompt, reply_ids
from trainer.driver.demonstrations import read_demonstrations
from trainer.driver.rollout import split
from trainer.spec import JobSpec
from trainer.spec.reports import WarmStartReport
from trainer.types import StepCounts, TokenBatch


def warm_start(actors: JobActors, spec: JobSpec, echo, reporter) -> dict[str, float]:
    """`warm_start.epochs` passes over the demonstrations, in batches of the RL step's size
    split over the learner ranks."""
    from transformers import AutoTokenizer

    ws = spec.warm_start
    tok = AutoTokenizer.from_pretrained(spec.model.path)
    chats = read_demonstrations(ws.data, ws.max_file_mb)
    batch = spec.rollout.prompts_per_step * spec.algorithm.group_size // spec.mini_batches
    steps = max(1, round(ws.epochs * len(chats) / batch))
    order = torch.randperm(len(chats), generator=torch.Generator().manual_seed(spec.schedule.seed)).tolist()
    reporter.send(WarmStartReport(message=f"supervised warm start: {steps} steps over {len(chats)} conversations"))
    t0, losses = time.perf_counter(), []
    for k in range(steps):
        rows = [encode(tok, chats[order[(k * batch + j) % len(chats)]]) for j in range(batch)]
        counts = StepCounts(num_sequences=batch, num_tokens=sum(sum(r.mask) for r in rows))
        refs = [learner.sft_step.remote(token_batch(shard), counts, ws.lr)
                for learner, shard in zip(actors.learners, split(rows, len(actors.learners)), strict=True)]
        losses.append(sum(s["loss"] for s in get_all(refs)))
        if (k + 1) % max(1, steps // 10) == 0 or k + 1 == steps:
            echo(f"warm start {k + 1}/{steps}: loss {losses[-1]:.3f}")
    seconds = time.perf_counter() - t0
    reporter.send(WarmStartReport(message=f"warm start done in {seconds:.0f} s, final loss {losses[-1]:.3f}",
                                  data={"steps": steps, "loss": losses[-1], "seconds": seconds}))
    return {"warm_start/loss": losses[-1], "warm_start/steps": steps, "warm_start/seconds": seconds}


@dataclass
class Encoded:
    prompt_ids: list[int]
    token_ids: list[int]
    mask: list[bool]


def encode(tokenizer, messages: list[dict[str, str]]) -> Encoded:
    """Prompt = everything before the first assistant turn; mask = the assistant's tokens."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    out = Encoded(format_prompt(tokenizer, messages[:first]), [], [])
    i = first
    while i < len(messages):
        if messages[i]["role"] == "assistant":
            ids = tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.token_ids += ids
            out.mask += [True] * len(ids)
            i += 1
            continue
        j = i
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        if j == len(messages):
            break  # nothing follows to learn from
        ids = reply_ids(tokenizer, messages[:i], messages[i:j], eos_sampled=True)
        out.token_ids += ids
        out.mask += [False] * len(ids)
        i = j
    return out


def token_batch(rows: list[Encoded]) -> TokenBatch:
    return TokenBatch([r.prompt_ids for r in rows], [r.token_ids for r in rows], [r.mask for r in rows])
