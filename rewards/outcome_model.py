"""`outcome_model`: a learned reward, the probability of the good outcome that an outcome model
(fitted on production traces by an `outcome_model` job) gives each conversation, prompt and
completion together. Where no hand-written reward exists, on-policy RL runs against what
production taught; give the job the true outcome as a weight-0 module too where the environment
knows it, and `compare_to` it, so each step logs how far the prediction drifts from the truth.

The conversation is read exactly as the job that fitted the model read each trace
(`conversation_ids`, `logits`): the chat template over every message, its last `max_tokens`
tokens, the score at the last token.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rewards.base import DATA_PATH, reward_config

META_FILE = "outcome_model.json"
"""Beside the exported weights: the label, the positive values, `max_tokens` and the held-out measures."""


class OutcomeModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    path: str = Field(min_length=1, json_schema_extra=DATA_PATH)
    """The outcome model: the `model` folder an `outcome_model` job exported."""

    batch_size: int = Field(default=16, ge=1, le=4096)
    """Conversations per forward pass."""

    @field_validator("path")
    @classmethod
    def _an_export(cls, value: str) -> str:
        if not (Path(value).expanduser() / META_FILE).is_file():
            raise ValueError(f"{value} is not an outcome model: expected the folder an outcome_model job "
                             f"exported (with {META_FILE})")
        return value


def conversation_ids(tokenizer, messages: list[dict], max_tokens: int) -> list[int]:
    """The conversation through the model's chat template, as token ids: the last `max_tokens`."""
    plain = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    text = tokenizer.apply_chat_template(plain, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"][-max_tokens:]


def logits(model, ids_B: list[list[int]], pad_id: int):
    """The classifier's score (a logit) of each conversation, as a float tensor [B]: right-padded,
    read at each row's last token."""
    import torch

    device = next(model.parameters()).device
    width = max(map(len, ids_B))
    input_ids = torch.full((len(ids_B), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids_B), width), dtype=torch.long)
    for r, ids in enumerate(ids_B):
        input_ids[r, :len(ids)], attention[r, :len(ids)] = torch.tensor(ids), 1
    hidden = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits[:, 0]
    return hidden.float()


_loading = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    meta = json.loads((Path(path) / META_FILE).read_text())
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path), meta


def _as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


@reward_config(OutcomeModelConfig)
def outcome_model(prompts, completions, *, config: OutcomeModelConfig, **_) -> list[float]:
    """P(good outcome) of each conversation under a fitted outcome model (0 to 1)."""
    import torch

    with _loading:
        model, tokenizer, meta = _load(str(Path(config.path).expanduser().resolve()))
    conversations = [_as_messages(p, "user") + _as_messages(c, "assistant")
                     for p, c in zip(prompts, completions, strict=True)]
    ids_B = [conversation_ids(tokenizer, m, meta["max_tokens"]) for m in conversations]
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(ids_B), config.batch_size):
            out += torch.sigmoid(logits(model, ids_B[start:start + config.batch_size],
                                        model.config.pad_token_id)).tolist()
    return out
