import asyncio
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from environments import EnvironmentConfigError, Episode, UnknownEnvironmentError, build

ROWS = [{"id": "a", "prompt": "2+2?", "answer": "4"},
        {"id": "b", "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "3+3?"}],
         "answer": "6"}]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_string_and_message_prompts(tmp_path):
    env = build("dataset", {"train": str(write_jsonl(tmp_path / "d.jsonl", ROWS)), "system_prompt": "sys"})
    a, b = env.tasks("train")
    assert a.prompt == [{"role": "system", "content": "sys"}, {"role": "user", "content": "2+2?"}]
    assert a.prompt_text == "2+2?" and a.columns == {"id": "a", "answer": "4"}
    assert b.prompt[0]["content"] == "be brief" and b.prompt_text is None
    step = asyncio.run(env.step(Episode(a, a.prompt)))
    assert step.done and step.reply == []


def test_parquet_and_datasets_folder_read_the_same(tmp_path):
    flat = [{"prompt": "q1", "answer": "1"}, {"prompt": "q2", "answer": "2"}]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "d.parquet")
    datasets.Dataset.from_list(flat).save_to_disk(str(tmp_path / "ds"))
    for source in (tmp_path / "d.parquet", tmp_path / "ds"):
        tasks = list(build("dataset", {"train": str(source)}).tasks("train"))
        assert [t.columns["answer"] for t in tasks] == ["1", "2"]


def test_missing_file_names_the_field(tmp_path):
    with pytest.raises(EnvironmentConfigError) as err:
        build("dataset", {"train": str(tmp_path / "nope.jsonl")})
    assert err.value.field == "train" and "no such file" in str(err.value)


def test_a_folder_that_is_no_datasets_folder_is_named_not_crashed_on(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    with pytest.raises(EnvironmentConfigError) as err:
        build("dataset", {"train": str(tmp_path / "etc")})
    assert err.value.field == "train" and "not a `datasets` folder" in str(err.value)


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(EnvironmentConfigError, match=r"d.jsonl:2: not valid JSON"):
        build("dataset", {"train": str(path)})


def test_missing_prompt_column_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q"}])
    with pytest.raises(EnvironmentConfigError) as err:
        build("dataset", {"train": str(path)})
    assert err.value.field == "prompt_column" and "['question']" in str(err.value)


def test_bad_config_and_unknown_environment(tmp_path):
    with pytest.raises(EnvironmentConfigError) as err:
        build("dataset", {})
    assert err.value.field == "train"
    with pytest.raises(UnknownEnvironmentError, match="valid names: dataset"):
        build("chess", {})


def test_missing_split_is_a_clear_error(tmp_path):
    env = build("dataset", {"train": str(write_jsonl(tmp_path / "d.jsonl", ROWS))})
    with pytest.raises(EnvironmentConfigError, match="no 'eval' split"):
        env.tasks("eval")
