"""The `http` reward: POST each batch to a team's scoring endpoint.

Request body: `{"prompts": [...], "completions": [...], "columns": {name: [...]}}`.
Expected answer: `{"rewards": [float | null, ...]}`, one per completion. Connection errors and
5xx answers are retried with exponential back-off; anything else (4xx, a malformed answer, the
wrong count, an answer over `max_response_bytes`) raises, so the scorer records those samples as
failed.

The answer is read as a stream and capped on its decoded size: a gzip or deflate body is inflated
here, never more than the cap, since a few kilobytes of gzip can inflate to gigabytes; any other
content encoding is refused.
"""

from __future__ import annotations

import json
import zlib
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

    max_response_bytes: int = Field(default=8 << 20, ge=1, le=1 << 30)
    """Largest answer read, decoded (after gzip); a larger one fails the batch's samples."""


class ResponseTooLarge(ValueError):
    """An answer over `max_response_bytes`, decoded."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None) | list | dict) else str(value)


async def _read_capped(response: httpx.Response, config: HttpRewardConfig) -> bytes:
    """The decoded answer, refused as soon as it passes `config.max_response_bytes`."""
    cap = config.max_response_bytes
    too_large = ResponseTooLarge(f"{config.url} answered more than {cap:,} bytes (decoded), the http reward's "
                                 "limit (config.max_response_bytes): raise it, or answer with less")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ValueError(f"{config.url} answered with Content-Encoding {encoding!r}; expected gzip, deflate or none")
    declared = response.headers.get("content-length", "")
    if encoding == "identity" and declared.isdigit() and int(declared) > cap:
        raise too_large
    inflate = None if encoding == "identity" else zlib.decompressobj(wbits=47)  # a gzip or a zlib header
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            while chunk:
                if inflate is None:
                    body += chunk
                    chunk = b""
                else:  # at most one byte past the cap; the rest of the input waits in unconsumed_tail
                    body += inflate.decompress(chunk, cap + 1 - len(body))
                    chunk = inflate.unconsumed_tail
                if len(body) > cap:
                    raise too_large
        if inflate is not None:
            body += inflate.flush()
    except zlib.error as exc:
        raise ValueError(f"{config.url} answered a malformed {encoding} body ({exc})") from None
    if len(body) > cap:
        raise too_large
    return bytes(body)


@reward_config(HttpRewardConfig)
async def http(prompts, completions, *, config: HttpRewardConfig, **columns) -> list[float | None]:
    """Score a batch on a remote endpoint (see the module docstring for the wire format)."""
    body = {
        "prompts": prompts,
        "completions": completions,
        "columns": {k: [_jsonable(v) for v in vs] for k, vs in columns.items()},
    }
    headers = {"Accept-Encoding": "gzip, deflate", **config.headers}
    async with httpx.AsyncClient(timeout=config.timeout_s, headers=headers) as client:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(config.retries + 1),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                async with client.stream("POST", str(config.url), json=body) as response:
                    response.raise_for_status()
                    answer = json.loads(await _read_capped(response, config))
    rewards = answer.get("rewards") if isinstance(answer, dict) else None
    if not isinstance(rewards, list) or len(rewards) != len(completions):
        raise ValueError(f"{config.url} answered {len(rewards) if isinstance(rewards, list) else rewards!r} "
                         f"rewards for {len(completions)} completions; expected a list `rewards` of that length")
    return [None if r is None else float(r) for r in rewards]
