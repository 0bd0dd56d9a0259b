"""Steps 1 to 4 for the algorithms that learn from logged traces (`trainer.algorithms.offline`):
nothing is rolled out. Every trace is laid out once, before the first step, token for token as a
multi-turn rollout would have laid it out (the prompt, then each logged assistant turn with the
behaviour policy's logprobs, then the template tokens of what followed), so a trace the policy
cannot learn from is refused before any weight moves. Each step takes the next traces in the
sampler's order, scores them with the job's reward modules on the reward worker (the outcome
labels are their columns) and gives each the algorithm's advantage.

Behaviour logprobs. Logged token ids must be the model's own tokenisation of the content (with or
without the closing EOS); OpenAI-shaped `tokens` must spell the content and match the model's
tokenisation one for one. A logged turn that covers its content but not the EOS gets logprob 0 on
the EOS (probability 1: its importance weight is then pi(EOS), never more than 1). With
`algorithm.behaviour = "base"` the logprobs are the base model's, computed once on every trace
before training and kept in the run folder, so a resumed run uses the same ones.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from environments.base import Task
from rewards import ScoreResult
from trainer.actors.cluster import JobActors
from trainer.algorithms import Algorithm
from trainer.chat import format_prompt, reply_ids
from trainer.driver.learn import loss_masks, sharded_call
from trainer.driver.sampler import TaskSampler
from trainer.spec import JobSpec
from trainer.types import Completion, PolicyBatch, PolicyStepStats, Sample, StepCounts, TokenBatch

log = logging.getLogger("flywheel.trainer")

class TraceLayoutError(ValueError):
    """A trace that cannot be learned from as logged; the message names the trace and the message."""


def _turn_logprobs(ids: list[int], content: str, behaviour: dict | None, where: str) -> list[float]:
    """The behaviour logprob of each of an assistant turn's tokens (`ids`, its content then EOS)."""
    if behaviour is None:
        raise TraceLayoutError(f"{where}: no behaviour logprobs logged; offline_pg weighs each token by "
                               "pi / pi_behaviour, so it needs them (or algorithm.behaviour = \"base\" when the "
                               "base model wrote these traces)")
    logprobs = list(behaviour["logprobs"])
    if "token_ids" in behaviour:
        logged = list(behaviour["token_ids"])
        if logged == ids[:len(logged)] and len(logged) in (len(ids), len(ids) - 1):
            return logprobs + [0.0] * (len(ids) - len(logged))
        raise TraceLayoutError(f"{where}: the {len(logged)} logged token ids are not the model's tokenisation of the "
                               f"content ({len(ids) - 1} tokens, then its EOS): log with the trained model's "
                               "tokenizer, or set algorithm.behaviour = \"base\"")
    tokens = behaviour["tokens"]
    if "".join(tokens) == content and len(tokens) == len(ids) - 1:
        return logprobs + [0.0]
    raise TraceLayoutError(f"{where}: the logged tokens ({len(tokens)}) do not match the model's tokenisation of "
                           f"the content ({len(ids) - 1} tokens): log token ids with the trained model's tokenizer, "
                           "or set algorithm.behaviour = \"base\"")


def lay_out(tokenizer, task: Task, with_behaviour: bool) -> Sample:
    """One trace as a sample: the logged reply's tokens, the loss mask on the assistant's, and
    the behaviour logprobs on those (0 elsewhere, and everywhere when `with_behaviour` is off)."""
    logged = task.logged
    history = list(task.prompt)
    ids_T, mask_T, logprobs_T = [], [], []
    i = 0
    while i < len(logged.messages):
        message = logged.messages[i]
        if message["role"] == "assistant":
            ids = tokenizer(message["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            where = f"trace {task.id!r}, message {len(task.prompt) + i}"
            lps = (_turn_logprobs(ids, message["content"], logged.behaviour[i], where) if with_behaviour
                   else [0.0] * len(ids))
            ids_T, mask_T, logprobs_T = ids_T + ids, mask_T + [True] * len(ids), logprobs_T + lps
            history.append(message)
            i += 1
            continue
        j = i
        while j < len(logged.messages) and logged.messages[j]["role"] != "assistant":
            j += 1
        if j == len(logged.messages):
            break  # what follows the last assistant turn is not learned from
        ids = reply_ids(tokenizer, history, logged.messages[i:j], eos_sampled=True)
        ids_T, mask_T, logprobs_T = ids_T + ids, mask_T + [False] * len(ids), logprobs_T + [0.0] * len(ids)
        history += logged.messages[i:j]
        i = j
    turns = sum(m["role"] == "assistant" for m in logged.messages)
    completion = Completion(ids_T, logprobs_T, "", truncated=False, mask=mask_T)
    return Sample(task, group=0, prompt_ids=format_prompt(tokenizer, task.prompt), completion=completion,
                  weights_version=-1, messages=logged.messages, outcome={"turns": turns, **task.columns})


def prepare(tasks: list[Task], spec: JobSpec) -> dict[str, Sample]:
    """Every trace laid out, by id, refusing the first that cannot be (before any actor works)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.model.path)
    logged = getattr(spec.algorithm, "behaviour", None) == "logged"
    samples = [lay_out(tokenizer, t, logged) for t in tasks]
    for k, s in enumerate(samples):
        s.group = k
    return {s.task.id: s for s in samples}


def behaviour_from_base(actors: JobActors, traces: dict[str, Sample], spec: JobSpec) -> None:
    """With `algorithm.behaviour = "base"`: every trace's behaviour logprobs are the policy's before
    the first step (after any warm start), computed once and kept in the run folder, so a resumed
    run uses the same ones."""
    if getattr(spec.algorithm, "behaviour", None) != "base":
        return
    samples = list(traces.values())
    cached = spec.run_dir / "behaviour_logprobs.pkl"
    if not cached.exists():
        log.info(f"scoring {len(samples)} traces under the starting policy (algorithm.behaviour = \"base\")")
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(pickle.dumps(base_logprobs(actors, samples)))
    for s, lps in zip(samples, pickle.loads(Path(cached).read_bytes()), strict=True):
        s.completion.logprobs = [lp if m else 0.0 for lp, m in zip(lps, s.completion.loss_mask(), strict=True)]


def base_logprobs(actors: JobActors, samples: list[Sample]) -> list[list[float]]:
    """The current policy's logprob of every completion token, in chunks the ranks split evenly."""
    ranks, out = len(actors.learners), []
    for start in range(0, len(samples), 64 * ranks):
        chunk = samples[start:start + 64 * ranks]
        pad = (-len(chunk)) % ranks
        rows = chunk + chunk[:1] * pad
        batch = TokenBatch([s.prompt_ids for s in rows], [s.completion.token_ids for s in rows],
                           [s.completion.loss_mask() for s in rows])
        out += [x for part in sharded_call(actors.learners, "logprobs", batch) for x in part][:len(chunk)]
    return out


def take(sampler: TaskSampler, by_id: dict[str, Sample], n: int, actors: JobActors) -> tuple[list[Sample], list]:
    """The next `n` traces in the sampler's seeded, resumable order, sent to the reward worker to
    be scored as logged (their outcome labels are its columns): the samples, the score reference."""
    samples = [by_id[t.id] for t in sampler.next(n)]
    return samples, [actors.rewarder.score.remote(samples)]


def learn(actors: JobActors, samples: list[Sample], scores: ScoreResult, algorithm: Algorithm, spec: JobSpec
          ) -> tuple[dict[str, float], torch.Tensor]:
    """Steps 4 and 5 from traces: the algorithm's advantage per trace, then one optimizer step over
    the traces it keeps (a failed reward, or a trace the algorithm filters out, is not learned
    from). Returns the statistics and the advantages as [B, 1]."""
    rewards_B = torch.tensor(scores.total, dtype=torch.float32)
    keep_B = ~torch.tensor(scores.failed) & algorithm.keeps(rewards_B)
    column = getattr(spec.algorithm, "group_column", None)
    groups = [s.task.columns.get(column, s.task.columns.get(f"metadata.{column}")) for s in samples] if column else None
    advantages_B = algorithm.trace_advantages(rewards_B, keep_B, groups)
    masks = loss_masks(samples, (~keep_B).tolist(), drop_truncated=False)
    z = reference_point(actors, samples) if algorithm.needs_reference_point else 0.0
    batch = PolicyBatch([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples], masks,
                        rollout_logprobs_B_T=[s.completion.logprobs for s in samples],
                        advantages_B=advantages_B.tolist(), reference_point=z)
    counts = StepCounts(num_sequences=sum(any(m) for m in masks), num_tokens=sum(map(sum, masks)))
    step_stats = PolicyStepStats.combine(sharded_call(actors.learners, "train_step", batch, counts))
    stats = {**step_stats.metrics(), "grad_norm": step_stats.grad_norm, "traces/kept": float(keep_B.sum())}
    if algorithm.needs_reference_point:
        stats["kto/reference_point"] = z
    if getattr(spec.algorithm, "behaviour", None) is None:  # no behaviour logprobs: nothing to compare
        stats = {k: v for k, v in stats.items() if not k.startswith(("mismatch/", "is_weight/"))}
    return stats, advantages_B.view(-1, 1)


def reference_point(actors: JobActors, samples: list[Sample]) -> float:
    """KTO's z: the policy's KL from the reference, estimated as TRL does on mismatched pairs
    (trace i's reply after trace i+1's prompt), clamped at 0."""
    shifted = samples[1:] + samples[:1]
    batch = TokenBatch([s.prompt_ids for s in shifted], [s.completion.token_ids for s in samples],
                       [s.completion.loss_mask() for s in samples])
    policy = [x for part in sharded_call(actors.learners, "logprobs", batch) for x in part]
    reference = [x for part in sharded_call(actors.learners, "logprobs", batch, "reference") for x in part]
    gaps = [sum(p - r for p, r, m in zip(ps, rs, s.completion.loss_mask(), strict=True) if m)
            for ps, rs, s in zip(policy, reference, samples, strict=True)]
    return max(sum(gaps) / len(gaps), 0.0)
