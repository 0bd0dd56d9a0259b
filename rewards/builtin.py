"""Built-in reward modules: string checks, regex, JSON, length penalty, and TRL's own rewards.

Each is a plain TRL-convention function; those with parameters declare a config model. Where TRL
already ships the piece (DAPO's soft overlong punishment, the n-gram repetition penalty, the
`<think>` format check) the built-in is TRL's function, configured here.
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rewards.base import completion_text, reward_config


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class MatchConfig(_Config):
    column: str = "answer"
    """Dataset column holding the expected string for each sample."""

    strip: bool = True
    """Ignore leading and trailing white space."""

    case_sensitive: bool = True
    """Compare case-sensitively."""


def _norm(text: str, cfg: MatchConfig) -> str:
    text = text.strip() if cfg.strip else text
    return text if cfg.case_sensitive else text.lower()


def _expected(columns: dict, cfg: MatchConfig, n: int) -> list:
    if cfg.column not in columns:
        raise KeyError(f"column {cfg.column!r} is not in the data (columns: {sorted(columns)})")
    values = columns[cfg.column]
    assert len(values) == n, "one expected value per completion"
    return values


@reward_config(MatchConfig)
def exact_match(prompts, completions, *, config: MatchConfig, **columns) -> list[float | None]:
    """1.0 when the completion equals the row's expected string, else 0.0; None where the row has none."""
    expected = _expected(columns, config, len(completions))
    return [None if want is None else float(_norm(completion_text(c), config) == _norm(str(want), config))
            for c, want in zip(completions, expected, strict=True)]


@reward_config(MatchConfig)
def contains(prompts, completions, *, config: MatchConfig, **columns) -> list[float | None]:
    """1.0 when the completion contains the row's expected string, else 0.0."""
    expected = _expected(columns, config, len(completions))
    return [None if want is None else float(_norm(str(want), config) in _norm(completion_text(c), config))
            for c, want in zip(completions, expected, strict=True)]


class RegexConfig(_Config):
    pattern: str
    """Regular expression (Python `re` syntax, run by the `regex` engine)."""

    match_timeout_s: float = Field(default=1.0, gt=0, le=60)
    """Time limit for matching one completion. A pattern that backtracks exponentially (`(a+)+$`)
    stops there and the call fails, recorded as such; the engine also lets go of the GIL while it
    matches, so the module's own time limit still fires."""

    mode: Literal["search", "fullmatch", "coverage"] = "search"
    """`search`: 1 if it matches anywhere; `fullmatch`: 1 if the whole completion matches;
    `coverage`: the share of the completion's characters inside non-overlapping matches."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import regex as engine

        try:
            engine.compile(value)
        except engine.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


@reward_config(RegexConfig)
def regex(prompts, completions, *, config: RegexConfig, **columns) -> list[float]:
    """Score completions against a regular expression (see RegexConfig.mode). A completion whose
    match runs past `match_timeout_s` raises TimeoutError: the batch is recorded as failed."""
    import regex as engine

    pattern = engine.compile(config.pattern)
    limit = {"concurrent": True, "timeout": config.match_timeout_s}
    scores = []
    for completion in completions:
        text = completion_text(completion)
        if config.mode == "search":
            scores.append(float(pattern.search(text, **limit) is not None))
        elif config.mode == "fullmatch":
            scores.append(float(pattern.fullmatch(text, **limit) is not None))
        else:
            covered = sum(m.end() - m.start() for m in pattern.finditer(text, **limit))
            scores.append(covered / len(text) if text else 0.0)
    return scores


def json_valid(prompts, completions, **columns) -> list[float]:
    """1.0 when the completion parses as JSON, else 0.0."""
    scores = []
    for completion in completions:
        try:
            json.loads(completion_text(completion))
            scores.append(1.0)
        except ValueError:
            scores.append(0.0)
    return scores


class JsonSchemaConfig(_Config):
    json_schema: dict = Field(alias="schema")
    """The JSON Schema the completion must satisfy."""

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict) -> dict:
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value


@reward_config(JsonSchemaConfig)
def json_schema(prompts, completions, *, config: JsonSchemaConfig, **columns) -> list[float]:
    """1.0 when the completion is JSON that satisfies the schema, else 0.0."""
    validator = jsonschema.validators.validator_for(config.json_schema)(config.json_schema)
    scores = []
    for completion in completions:
        try:
            scores.append(float(validator.is_valid(json.loads(completion_text(completion)))))
        except ValueError:
            scores.append(0.0)
    return scores


class LengthPenaltyConfig(_Config):
    max_tokens: int = Field(gt=0)
    """Completions longer than this get -1."""

    soft_tokens: int = Field(default=0, ge=0)
    """Over the last `soft_tokens` before `max_tokens` the penalty ramps linearly from 0 to -1."""


@reward_config(LengthPenaltyConfig)
def length_penalty(prompts, completions, *, config: LengthPenaltyConfig, completion_ids, **columns):
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13), as TRL implements it."""
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(config.max_tokens, config.soft_tokens)(completion_ids)


class RepetitionConfig(_Config):
    ngram_size: int = Field(default=3, gt=0)
    """Length of the n-grams counted."""

    max_penalty: float = Field(default=-1.0, le=0)
    """Penalty of a completion made only of repeats."""


@reward_config(RepetitionConfig)
def repetition_penalty(prompts, completions, *, config: RepetitionConfig, completion_ids, **columns):
    """TRL's n-gram repetition penalty on completion token ids."""
    from trl.rewards import get_repetition_penalty_reward

    return get_repetition_penalty_reward(config.ngram_size, config.max_penalty)(completion_ids)


def think_format(prompts, completions, **columns) -> list[float]:
    """TRL's check for a `<think>…</think>` block before the answer."""
    from trl.rewards import think_format_reward

    as_messages = [c if not isinstance(c, str) else [{"role": "assistant", "content": c}]
                   for c in completions]
    return think_format_reward(as_messages)
