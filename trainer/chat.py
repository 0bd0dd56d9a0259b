"""Chats as token ids: the prompt through the model's chat template, and the tokens that follow
an assistant turn in a multi-turn episode. The rollout workers and the warm start lay out
conversations with these same two functions, so supervised and RL sequences match token for token.
"""

from __future__ import annotations

from environments.base import Message


def format_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Chat-template the prompt messages (TRL's helper) and tokenize them."""
    from trl.data_utils import maybe_apply_chat_template

    text = maybe_apply_chat_template({"prompt": messages}, tokenizer)["prompt"]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render(tokenizer, messages: list[Message], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def reply_ids(tokenizer, history: list[Message], reply: list[Message], eos_sampled: bool) -> list[int]:
    """Token ids that follow the assistant's sampled tokens: the rest of the assistant turn's
    template (its EOS unless the model sampled it), the replies, and the next generation prompt."""
    before = render(tokenizer, history, generation_prompt=False)
    after = render(tokenizer, history + reply, generation_prompt=True)
    if not after.startswith(before):
        raise ValueError("the chat template renders a conversation differently once it grows; "
                         "multi-turn rollouts need a template that only appends")
    content = history[-1]["content"]
    closing = before[before.rindex(content) + len(content):] if content else before[len(before.rstrip()):]
    eos = tokenizer.eos_token or ""
    if eos_sampled and eos and closing.startswith(eos):
        closing = closing[len(eos):]
    return tokenizer(closing + after[len(before):], add_special_tokens=False)["input_ids"]
