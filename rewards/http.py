"""The `http` reward: POST each batch to a team's scoring endpoint.

Request body: `{"prompts": [...], "completions": [...], "columns": {name: [...]}}`.
Expected answer: `{"rewards": [float | null, ...]}`, one per completion. Connection errors and
5xx answers are retried with exponential back-off; anything else (4xx, a malformed answer, the
wrong count) raises, so the scorer records those samples as failed.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from rewards.base import reward_config


class HttpRewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    url: HttpUrl
    """Endpoint that scores a batch."""

    timeout_s: float = Field(default=10.0, gt=0)
    """Time limit of one HTTP request."""

    retries: int = Field(default=2, ge=0)
    """Extra attempts after a connection error or a 5xx answer."""

    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (an auth token, say)."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None) | list | dict) else str(value)


@reward_config(HttpRewardConfig)
async def http(prompts, completions, *, config: HttpRewardConfig, **columns) -> list[float | None]:
    """Score a batch on a remote endpoint (see the module docstring for the wire format)."""
    body = {
        "prompts": prompts,
        "completions": completions,
        "columns": {k: [_jsonable(v) for v in vs] for k, vs in columns.items()},
    }
    async with httpx.AsyncClient(timeout=config.timeout_s, headers=config.headers) as client:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(config.retries + 1),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                response = await client.post(str(config.url), json=body)
                response.raise_for_status()
    rewards = response.json().get("rewards")
    if not isinstance(rewards, list) or len(rewards) != len(completions):
        raise ValueError(f"{config.url} answered {len(rewards) if isinstance(rewards, list) else rewards!r} "
                         f"rewards for {len(completions)} completions; expected a list `rewards` of that length")
    return [None if r is None else float(r) for r in rewards]
