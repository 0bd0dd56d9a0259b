"""Learning from logged outcomes through the real stack (local Ray, DeepSpeed ranks, the reward
worker): a snapshot of traces the base model itself wrote, with its own logprobs logged, half of
them resolved (the answer in digits) and half escalated (the topic word instead). Each offline
algorithm must move the policy towards the resolved replies and (for the two that use the
failures) away from the escalated ones; nothing is rolled out."""

import json
import math

import pytest
import torch

from environments.snapshot import write_snapshot
from tests.conftest import DIGITS, job_payload
from trainer.loop import train
from trainer.spec import parse_spec

pytestmark = pytest.mark.slow

ALGORITHMS = {
    "offline_pg": {"type": "offline_pg", "is_cap": 2.0},
    "kto": {"type": "kto", "beta": 0.5},
    "filtered_sft": {"type": "filtered_sft", "min_reward": 0.5},
}


def reply_logprobs(model, tokenizer, prompt: list[dict], reply: str) -> tuple[list[int], list[float]]:
    """The model's token ids (content, then EOS) and logprobs of `reply` after `prompt`."""
    from trainer.chat import format_prompt

    prompt_ids = format_prompt(tokenizer, prompt)
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1].float()
    return ids, torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None]).squeeze(1).tolist()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in DIGITS.read_text().splitlines()[:24]]


@pytest.fixture(scope="module")
def snapshot(tiny_model, rows, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    traces = []
    for i, row in enumerate(rows):
        prompt = [{"role": "user", "content": row["prompt"]}]
        for outcome, reply in (("resolved", row["answer"]), ("escalated", row["topic"])):
            ids, lps = reply_logprobs(model, tok, prompt, reply)
            traces.append({"trace_id": f"t{i}-{outcome}", "model": "base", "outcome": {"outcome": outcome},
                           "messages": [*prompt, {"role": "assistant", "content": reply,
                                                  "logprobs": {"token_ids": ids, "logprobs": lps}}]})
    path = tmp_path_factory.mktemp("traces") / "snapshot.parquet"
    write_snapshot(traces, path)
    return path


def preference(model_path, rows) -> tuple[float, float]:
    """Mean log p(resolved reply) and log p(escalated reply) under a model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    good = [sum(reply_logprobs(model, tok, [{"role": "user", "content": r["prompt"]}], r["answer"])[1]) for r in rows]
    bad = [sum(reply_logprobs(model, tok, [{"role": "user", "content": r["prompt"]}], r["topic"])[1]) for r in rows]
    return sum(good) / len(good), sum(bad) / len(bad)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_learns_from_logged_outcomes_only(name, tiny_model, snapshot, rows, tmp_path, ray_cluster):
    spec = parse_spec(job_payload(
        tiny_model, tmp_path, name=name, algorithm=ALGORITHMS[name],
        environment={"name": "traces", "config": {"snapshot": str(snapshot)}},
        rewards=[{"name": "resolution"}],
        rollout={"workers": 1, "prompts_per_step": 16, "max_new_tokens": 8},
        learner={"ranks": 2, "zero_stage": 2, "lr": 1e-2, "micro_batch": 8},
        schedule={"steps": 6, "checkpoint_interval": 0, "eval_before_after": False}))
    result = train(spec, echo=lambda _: None)
    first = result.history[0]
    # The snapshot's 48 traces, 16 a step, half of them resolved: the rewards are the outcomes'.
    assert all(m["reward/resolution"] == pytest.approx(0.5, abs=0.26) for m in result.history)
    if name == "offline_pg":
        # Step 1's policy is the one that logged the traces: laid out token for token as logged,
        # every importance weight is 1 (the learner computes the same logprobs the test logged).
        assert first["mismatch/logprob_diff_max"] < 1e-4 and first["is_weight/mean"] == pytest.approx(1.0, abs=1e-4)
    if name == "kto":
        assert first["kto/reference_point"] == 0.0  # the policy is the reference at step 1
    if name == "filtered_sft":
        assert all(m["traces/kept"] < 16 for m in result.history)  # the escalated ones are left out
    good_before, bad_before = preference(tiny_model, rows)
    good_after, bad_after = preference(result.export_dir, rows)
    assert good_after > good_before + 1.0, (good_before, good_after)
    if name != "filtered_sft":
        assert bad_after < bad_before - 1.0, (bad_before, bad_after)
    assert math.isfinite(first["loss"])
