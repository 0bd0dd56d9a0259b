"""The support desk's production log (demos/production.py): what a deployment
would log, in a shape the traces API takes, and read back by the traces environment as the very
turns the agent wrote."""

import random
from collections import Counter

import pytest

from demos.legacy_agent import Mistakes, legacy_turns
from demos.production import PRODUCTION_SEED_OFFSET, production_log
from environments import build
from environments.snapshot import write_snapshot
from environments.support_desk.simulator import make_ticket
from service.api.trace_schemas import TraceIn
from service.traces.logic import trace_problems


def test_the_log_is_valid_openai_format_and_reads_back_as_the_agents_own_turns(tmp_path):
    log = production_log(60, Mistakes(), seed=3)
    for trace, outcome in log:
        assert "outcome" not in trace  # the outcome is reported later
        assert trace_problems(TraceIn.model_validate(trace), "trace") == []
        assert outcome["outcome"] in ("resolved", "escalated", "violation")
    assert any(m.get("tool_calls") for t, _ in log for m in t["messages"])
    write_snapshot([{**t, "outcome": o} for t, o in log], tmp_path / "log.parquet")
    tasks = build("traces", {"snapshot": str(tmp_path / "log.parquet"), "tool_calls": "call"}).tasks("train")
    rng = random.Random(3)
    for i, task in enumerate(tasks):  # the same agent, replayed: the turns the model will learn from
        expected = legacy_turns(make_ticket(PRODUCTION_SEED_OFFSET + i), Mistakes(), rng)
        assert [m["content"] for m in task.logged.messages if m["role"] == "assistant"] == expected
        assert task.columns["outcome"] == log[i][1]["outcome"]


def test_the_legacy_agent_makes_its_mistakes_in_production():
    outcomes = Counter(o["outcome"] for _, o in production_log(400, Mistakes()))
    assert outcomes["violation"] > 20 and outcomes["escalated"] > 60 and outcomes["resolved"] > 150


def test_a_model_folder_as_the_agent_logs_its_sampled_tokens_with_their_logprobs(tiny_model):
    import torch

    from demos.model_agent import ModelAgent

    agent = ModelAgent(str(tiny_model), max_new_tokens=6, seed=1)
    log = production_log(3, Mistakes(), agent="tiny", agent_model=agent)
    tok, model = agent.tokenizer, agent.model
    for trace, outcome in log:
        assert trace["model"] == "tiny" and outcome["outcome"] in ("resolved", "escalated", "violation")
        assert trace_problems(TraceIn.model_validate(trace), "trace") == []
        history = []
        for m in trace["messages"]:
            if m["role"] == "assistant":  # the logged logprobs are the model's own, token for token (T = 1)
                lp = m["logprobs"]
                text = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
                ids = tok(text, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    logits = model(torch.tensor([ids + lp["token_ids"]])).logits[0, len(ids) - 1:-1]
                expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(lp["token_ids"])[:, None]).squeeze(1)
                assert lp["logprobs"] == pytest.approx(expected.tolist(), abs=1e-4)
            history.append({"role": m["role"], "content": m.get("content") or ""})
