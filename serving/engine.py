"""One served model version: its engine, and a batcher that puts the requests that arrive
together through the engine in one call (the engine samples a batch almost as fast as one)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from trainer.chat import format_prompt
from trainer.engines import build_engine
from trainer.types import Completion, SamplingParams


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future
    on_step: Callable[[int, float], None] | None = None
    """Streaming: called (from the engine's thread) with each new token and its logprob."""


@dataclass
class ServedModel:
    """A model version loaded in an engine; `conversations` counts the open ones pinned to it."""

    version: str
    path: str
    engine: object
    max_batch: int = 32
    conversations: set[str] = field(default_factory=set)
    in_flight: int = 0
    _queue: asyncio.Queue | None = None
    _worker: asyncio.Task | None = None
    _seeds: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    async def load(cls, version: str, path: str, engine: str = "hf", dtype: str = "float32") -> ServedModel:
        """Load off the event loop, so requests keep being answered while a new version loads."""
        built = await asyncio.to_thread(build_engine, engine, path, dtype)
        return cls(version, path, built)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return format_prompt(self.engine.tokenizer(), messages)

    @functools.cached_property
    def streams(self) -> bool:
        """Whether the engine hands over each token as it is sampled (the HF engine does)."""
        return "on_step" in inspect.signature(self.engine.generate).parameters

    async def complete(self, prompt_ids: list[int], sampling: SamplingParams,
                       on_step: Callable[[int, float], None] | None = None) -> Completion:
        """The completion; with `on_step`, each token is also handed over as it is sampled."""
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        try:
            await self._queue.put(_Request(prompt_ids, sampling, future, on_step))
            return await future
        finally:
            self.in_flight -= 1

    async def _serve(self) -> None:
        """Take every request waiting (up to `max_batch`), one engine call per set of sampling
        settings, in a worker thread; the engine is used by one call at a time."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault((r.sampling.max_new_tokens, r.sampling.temperature, r.sampling.top_p), []).append(r)
            for key, rows in groups.items():
                streaming = any(r.on_step for r in rows) and self.streams
                try:
                    out = await asyncio.to_thread(self.engine.generate, [r.prompt_ids for r in rows], 1,
                                                  SamplingParams(*key), next(self._seeds),
                                                  **({"on_step": self._dispatch(rows)} if streaming else {}))
                except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                    for r in rows:
                        if not r.future.done():
                            r.future.set_exception(exc)
                    continue
                for r, group in zip(rows, out, strict=True):
                    if not r.future.done():
                        r.future.set_result(group[0])

    def _dispatch(self, rows: list[_Request]) -> Callable[[list[int], list[float]], None]:
        """Each decoding step's tokens to the streaming requests of the batch, up to their EOS."""
        eos, ended = getattr(self.engine, "eos_ids", set()), set()

        def step(tokens: list[int], logprobs: list[float]) -> None:
            for i, r in enumerate(rows):
                if r.on_step is not None and i not in ended:
                    r.on_step(tokens[i], logprobs[i])
                    if tokens[i] in eos:
                        ended.add(i)
        return step

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
