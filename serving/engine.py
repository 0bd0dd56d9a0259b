"""One served model version: its engine, and a batcher that puts the requests that arrive
together through the engine in one call (the engine samples a batch almost as fast as one).

A version is loaded only if its folder holds exactly the files the registry recorded for it, each
of the recorded size and SHA-256 (`check_files`): a model whose files changed after registration,
or one registered without hashes, is refused. The check reads the files just before the engine
does; it does not guard against a writer that swaps a file between the two reads.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.chat import format_prompt
from trainer.engines import build_engine
from trainer.types import Completion, SamplingParams


class ModelRefused(Exception):
    """A model version whose files are not the ones the registry recorded."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(version: str, path: str, files: list[dict]) -> None:
    """Refuse the version unless its folder holds exactly the registered files (`GET
    /v1/models/{id}`'s `files`: name, bytes, sha256), each of its recorded size and hash."""
    folder = Path(path).resolve()
    if not files:
        raise ModelRefused(f"{version} is registered with no files")
    unhashed = [f["name"] for f in files if not f.get("sha256")]
    if unhashed:
        raise ModelRefused(f"{version} is registered without file hashes ({', '.join(unhashed[:3])}"
                           f"{', ...' if len(unhashed) > 3 else ''}): a deployment serves only hashed files")
    if not folder.is_dir():
        raise ModelRefused(f"{version}: its folder is gone")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    extra = sorted(present - {f["name"] for f in files})
    if extra:
        raise ModelRefused(f"{version}: its folder holds files the registry did not record: {', '.join(extra[:5])}")
    for f in files:
        file = folder / f["name"]
        if not file.resolve().is_relative_to(folder) or not file.is_file():
            raise ModelRefused(f"{version}: {f['name']} is missing from its folder")
        if file.stat().st_size != f["bytes"]:
            raise ModelRefused(f"{version}: {f['name']} is {file.stat().st_size:,} bytes, registered as "
                               f"{f['bytes']:,}: the model changed after registration")
        if _sha256(file) != f["sha256"]:
            raise ModelRefused(f"{version}: {f['name']} does not match its registered sha256: the model changed "
                               "after registration")


def context_length(path: str) -> int | None:
    """The model's context window in tokens, from its config (None when it does not say)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(name), int) and config[name] > 0:
            return config[name]
    return None


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
    context: int | None = None
    """Prompt and reply tokens together may not exceed this (None: the model does not say)."""
    max_batch: int = 32
    conversations: set[str] = field(default_factory=set)
    in_flight: int = 0
    _queue: asyncio.Queue | None = None
    _worker: asyncio.Task | None = None
    _seeds: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    async def load(cls, version: str, path: str, files: list[dict], engine: str = "hf",
                   dtype: str = "float32") -> ServedModel:
        """Check the files against the registry's hashes (`ModelRefused` if they differ), then load;
        both off the event loop, so requests keep being answered meanwhile."""
        await asyncio.to_thread(check_files, version, path, files)
        built = await asyncio.to_thread(build_engine, engine, path, dtype)
        return cls(version, path, built, context_length(path))

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
            batch = [r for r in batch if not r.future.done()]  # past their deadline while waiting: not run
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
