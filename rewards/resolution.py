"""`resolution`: the outcome reward of a multi-turn episode (the support desk's and any other
environment that records an `outcome` field), with an optional cost per agent turn."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rewards.base import reward_config


class ResolutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    resolved: float = 1.0
    """Reward for an episode resolved without a human."""

    escalated: float = 0.0
    """Reward for an episode handed to a human."""

    violation: float = -1.0
    """Reward for an episode that broke a policy rule."""

    unfinished: float = 0.0
    """Reward for an episode the turn budget cut off before the environment ended it."""

    per_turn_cost: float = Field(0.0, ge=0.0)
    """Subtracted once per agent turn, so shorter resolutions score higher."""


@reward_config(ResolutionConfig)
def resolution(prompts, completions, *, config: ResolutionConfig, outcome=None, turns=None, **_) -> list[float]:
    """The episode's outcome value (resolved / escalated / violation) minus per_turn_cost per turn."""
    if outcome is None:
        raise KeyError("no `outcome` field: the resolution reward needs a multi-turn environment "
                       "that records outcomes, such as support_desk")
    values = config.model_dump()
    out = []
    for o, t in zip(outcome, turns or [0] * len(outcome), strict=True):
        if o not in ("resolved", "escalated", "violation", "unfinished"):
            raise ValueError(f"unknown outcome {o!r}; expected resolved, escalated, violation or unfinished")
        out.append(values[o] - config.per_turn_cost * (t or 0))
    return out
