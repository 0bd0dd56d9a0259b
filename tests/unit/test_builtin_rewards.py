import pytest

from rewards import load
from rewards.base import RewardConfigError
from rewards.registry import UnknownRewardError

P = ["q"] * 3


def call(name, completions, config=None, **columns):
    module = load(name, config=config or {})
    ids = columns.pop("completion_ids", [[1] * len(c) for c in completions])
    return module.fn(prompts=P[: len(completions)], completions=completions, completion_ids=ids, **columns)


def test_exact_match_and_contains_use_the_answer_column():
    assert call("exact_match", [" 42 ", "41", "x"], answer=["42", "42", None]) == [1.0, 0.0, None]
    assert call("contains", ["it is 42.", "no", "ANSWER"], {"case_sensitive": False},
                answer=["42", "42", "answer"]) == [1.0, 0.0, 1.0]


def test_missing_column_raises_naming_it():
    with pytest.raises(KeyError, match="'gold' is not in the data"):
        call("exact_match", ["a"], {"column": "gold"}, answer=["a"])


def test_regex_modes():
    assert call("regex", ["ab12", "zz"], {"pattern": r"\d+"}) == [1.0, 0.0]
    assert call("regex", ["12", "12a"], {"pattern": r"\d+", "mode": "fullmatch"}) == [1.0, 0.0]
    assert call("regex", ["12ab", "", "1 2 "], {"pattern": "[0-9 ]+", "mode": "coverage"}) == [0.5, 0.0, 1.0]


def test_json_valid_and_json_schema():
    assert call("json_valid", ['{"a": 1}', "{a: 1}"]) == [1.0, 0.0]
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    assert call("json_schema", ['{"a": 1}', '{"a": "x"}', "nope"], {"schema": schema}) == [1.0, 0.0, 0.0]


def test_length_penalty_is_dapo_soft_overlong():
    ids = [[0] * 4, [0] * 7, [0] * 11]
    # max 10, soft 4: <= 6 tokens free; 7 tokens -> (6 - 7) / 4; over 10 -> -1
    assert call("length_penalty", ["a", "b", "c"], {"max_tokens": 10, "soft_tokens": 4},
                completion_ids=ids) == [0.0, -0.25, -1.0]


def test_repetition_penalty_and_think_format_come_from_trl():
    ids = [[1, 2, 3, 4], [1, 1, 1, 1]]
    assert call("repetition_penalty", ["a", "b"], {"ngram_size": 2}, completion_ids=ids) == [0.0, pytest.approx(-2 / 3)]
    assert call("think_format", ["<think>\nhm\n</think>\nyes", "yes"]) == [1.0, 0.0]


def test_config_errors_name_the_config_field():
    with pytest.raises(RewardConfigError, match=r"config.pattern: .*not a valid regular expression"):
        load("regex", config={"pattern": "("})
    with pytest.raises(RewardConfigError, match=r"config.mode"):
        load("regex", config={"pattern": "x", "mode": "sometimes"})
    with pytest.raises(RewardConfigError, match="takes no config"):
        load("json_valid", config={"strict": True})


def test_unknown_module_lists_the_valid_names():
    with pytest.raises(UnknownRewardError, match=r"unknown reward module 'resolvd'; valid names: .*exact_match.*regex"):
        load("resolvd")
