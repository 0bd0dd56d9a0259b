"""The traces environment (a Parquet snapshot of logged conversations) and how a trace is laid
out for the learner (trainer/driver/offline.py): prompts, outcome columns, behaviour logprobs in
either logged shape, and the clear refusals."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from environments import EnvironmentConfigError, build
from environments.snapshot import snapshot_hash, write_snapshot
from trainer.driver.offline import TraceLayoutError, lay_out


def trace(trace_id="t1", outcome=None, logprobs=None, reply="the order shipped", tool_call=True):
    tool = [{"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "shipped"}] if tool_call else []
    return {"trace_id": trace_id, "model": "agent", "model_version": "v1",
            "outcome": {"outcome": "resolved", "turns": 2} if outcome is None else outcome,
            "metadata": {"channel": "chat"},
            "messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "where is it?"}, *tool,
                         {"role": "assistant", "content": reply, **({"logprobs": logprobs} if logprobs else {})}]}


def test_snapshot_tasks_carry_the_prompt_the_logged_reply_and_the_outcome_as_columns(tmp_path):
    count, digest = write_snapshot([trace(), trace("t2", outcome={})], tmp_path / "s.parquet")
    assert count == 2 and digest == snapshot_hash(tmp_path / "s.parquet")
    env = build("traces", {"snapshot": str(tmp_path / "s.parquet")})
    (task,) = env.tasks("train")  # t2 has no outcome yet: left out (require_outcome)
    assert task.id == "t1" and [m["role"] for m in task.prompt] == ["system", "user"]
    assert task.columns == {"outcome": "resolved", "turns": 2, "metadata.channel": "chat", "trace_id": "t1"}
    assert [m["role"] for m in task.logged.messages] == ["assistant", "tool", "assistant"]
    assert task.logged.messages[0]["content"] == '[{"name": "lookup", "arguments": "{}"}]'  # tool calls as JSON
    assert len(build("traces", {"snapshot": str(tmp_path / "s.parquet"), "require_outcome": False}).tasks("train")) == 2


def test_evaluation_is_the_named_environments_held_out_split(tmp_path):
    write_snapshot([trace()], tmp_path / "s.parquet")
    env = build("traces", {"snapshot": str(tmp_path / "s.parquet"),
                           "eval": {"name": "support_desk", "config": {"eval_size": 3}}})
    assert [t.id for t in env.tasks("eval")] == [t.id for t in build("support_desk", {"eval_size": 3}).tasks("eval")]
    assert env.multi_turn
    with pytest.raises(EnvironmentConfigError, match="no 'eval' split"):
        build("traces", {"snapshot": str(tmp_path / "s.parquet")}).tasks("eval")


def test_a_bad_snapshot_is_refused_naming_the_field(tmp_path):
    with pytest.raises(EnvironmentConfigError, match="no such file") as err:
        build("traces", {"snapshot": str(tmp_path / "missing.parquet")})
    assert err.value.field == "snapshot"
    pq.write_table(pa.table({"trace_id": ["a"]}), tmp_path / "thin.parquet")
    with pytest.raises(EnvironmentConfigError, match="missing columns"):
        build("traces", {"snapshot": str(tmp_path / "thin.parquet")})
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(EnvironmentConfigError, match="not a Parquet file"):
        build("traces", {"snapshot": str(tmp_path / "text.parquet")})


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def task_of(tmp_path, t):
    write_snapshot([t], tmp_path / "one.parquet")
    return build("traces", {"snapshot": str(tmp_path / "one.parquet")}).tasks("train")[0]


def test_logged_token_ids_and_openai_tokens_give_the_same_behaviour_logprobs(tokenizer, tmp_path):
    reply = "261 tickets"
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    lps = [-0.5 - 0.1 * k for k in range(len(ids))]
    logged = trace(reply=reply, logprobs={"token_ids": ids, "logprobs": lps})
    logged["messages"][2]["logprobs"] = {"token_ids": [tokenizer.eos_token_id], "logprobs": [-0.25]}  # the tool call
    logged["messages"][2]["content"] = ""
    del logged["messages"][2]["tool_calls"]
    by_ids = lay_out(tokenizer, task_of(tmp_path, logged), with_behaviour=True).completion
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "".join(pieces) == reply
    openai = {"content": [{"token": p, "logprob": lp} for p, lp in zip(pieces, lps, strict=True)]}
    by_tokens = lay_out(tokenizer, task_of(tmp_path, trace(reply=reply, logprobs=openai, tool_call=False)),
                        with_behaviour=True)
    # The reply's tokens then its EOS (0 where the log has none) carry the logged logprobs, in
    # either shape; the first turn (an empty one, logged with its EOS) too; the loss mask is on
    # both assistant turns, never on the tool's reply between them.
    n = len(ids) + 1
    assert by_tokens.completion.token_ids == ids + [tokenizer.eos_token_id]
    assert by_tokens.completion.logprobs == lps + [0.0] and by_tokens.completion.mask == [True] * n
    assert by_ids.token_ids[-n:] == by_tokens.completion.token_ids and by_ids.logprobs[-n:] == lps + [0.0]
    assert by_ids.token_ids[0] == tokenizer.eos_token_id and by_ids.logprobs[0] == -0.25 and by_ids.mask[0]
    assert by_ids.mask[-n:] == [True] * n and not all(by_ids.mask)
    assert by_tokens.outcome == {"turns": 2, "outcome": "resolved", "metadata.channel": "chat", "trace_id": "t1"}


def test_traces_the_behaviour_cannot_be_read_from_are_refused_naming_the_trace(tokenizer, tmp_path):
    with pytest.raises(TraceLayoutError, match=r"trace 't1', message 2: no behaviour logprobs"):
        lay_out(tokenizer, task_of(tmp_path, trace()), with_behaviour=True)
    wrong = trace(logprobs={"token_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9], "logprobs": [-1.0] * 9}, tool_call=False)
    lay_out(tokenizer, task_of(tmp_path, wrong), with_behaviour=False)  # KTO and filtered SFT do not read them
    with pytest.raises(TraceLayoutError, match="not the model's tokenisation"):
        lay_out(tokenizer, task_of(tmp_path, wrong), with_behaviour=True)
    spelled = {"content": [{"token": "the order", "logprob": -1.0}, {"token": " shipped", "logprob": -1.0}]}
    with pytest.raises(TraceLayoutError, match="do not match the model's tokenisation"):
        lay_out(tokenizer, task_of(tmp_path, trace(logprobs=spelled, tool_call=False)), with_behaviour=True)


def test_assistant_turns_the_server_did_not_sample_are_context_never_a_target(tokenizer, tmp_path):
    # The model server lists the turns it sampled (metadata.sampled_messages); the client wrote
    # message 2 (before the first sampled turn) and message 6 (after it) itself.
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "made up by the client"}, {"role": "user", "content": "and?"},
                {"role": "assistant", "content": "sampled"}, {"role": "user", "content": "ok"},
                {"role": "assistant", "content": "also made up"}, {"role": "user", "content": "so?"},
                {"role": "assistant", "content": "sampled too"}]
    served = {**trace(), "messages": messages, "metadata": {"sampled_messages": [4, 8]}}
    task = task_of(tmp_path, served)
    assert [m["content"] for m in task.prompt] == ["be kind", "hi", "made up by the client", "and?"]
    assert [m["content"] for m in task.logged.messages] == ["sampled", "ok"]  # ends before the made-up turn
    sample = lay_out(tokenizer, task, with_behaviour=False)
    trained = [t for t, m in zip(sample.completion.token_ids, sample.completion.mask, strict=True) if m]
    assert tokenizer.decode(trained, skip_special_tokens=True) == "sampled"
    assert "metadata.sampled_messages" not in task.columns
    # Without the field (a trace imported from elsewhere) every assistant turn is the model's.
    assert task_of(tmp_path, {**served, "metadata": {}}).logged.messages[0]["content"] == "made up by the client"
    with pytest.raises(EnvironmentConfigError, match="assistant message the model sampled"):
        task_of(tmp_path, {**served, "metadata": {"sampled_messages": [0]}})
