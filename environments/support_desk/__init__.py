"""The support-desk environment: multi-turn episodes over seeded tickets (see `simulator`).

    [environment]
    name = "support_desk"
    config = { train_size = 2000, eval_size = 100, max_turns = 5 }

Train and eval tickets come from disjoint seed ranges, so held-out tickets are never trained on.
Every episode's outcome fields — `outcome` (resolved / escalated / violation), `reason`, `turns`,
`tool_calls`, `errors` — and the task's `intent` reach the reward modules as keyword lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from environments.base import EnvironmentConfigError, Episode, Step, Task
from environments.support_desk.simulator import INTENTS, SYSTEM_PROMPT, Ticket, make_ticket, replay

EVAL_SEED_OFFSET = 1_000_000


class SupportDeskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    train_size: int = Field(2000, ge=1)
    """Training tickets."""

    eval_size: int = Field(100, ge=0)
    """Held-out tickets (seeds disjoint from training); 0 turns evaluation off."""

    seed: int = 0
    """Shifts both seed ranges: another seed, other tickets."""

    max_turns: int = Field(5, ge=1, le=50)
    """Agent turns before the ticket goes to a human (outcome `escalated`)."""

    max_errors: int = Field(2, ge=1)
    """Malformed or failed tool calls before the ticket goes to a human."""

    system_prompt: bool = True
    """Start each episode with the tool manual and policy as a system message. A model that
    learned the desk from demonstrations can do without it (shorter, cheaper episodes)."""

    intents: list[str] = Field(default_factory=lambda: list(INTENTS))
    """Which kinds of ticket to draw."""

    @field_validator("intents")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [i for i in v if i not in INTENTS]
        if unknown or not v:
            raise ValueError(f"expected a non-empty list of {', '.join(INTENTS)}; got {unknown or v}")
        return v


def ticket_task(ticket: Ticket, split: str, system_prompt: bool = True) -> Task:
    system = [{"role": "system", "content": SYSTEM_PROMPT}] if system_prompt else []
    return Task(id=f"{split}-{ticket.seed}", prompt=[*system, {"role": "user", "content": ticket.opening}],
                columns={"intent": ticket.intent, "ticket_seed": ticket.seed})


class SupportDeskEnvironment:
    """Seeded customer-support tickets; the outcome is resolved, escalated or violation."""

    config_model = SupportDeskConfig
    multi_turn = True

    def __init__(self, config: SupportDeskConfig):
        self.config = config

    def tickets(self, split: str) -> list[Ticket]:
        c = self.config
        if split == "train":
            seeds = range(c.seed * 10**7, c.seed * 10**7 + c.train_size)
        elif split == "eval":
            if not c.eval_size:
                raise ValueError("no eval split: eval_size is 0")
            start = c.seed * 10**7 + EVAL_SEED_OFFSET
            seeds = range(start, start + c.eval_size)
        else:
            raise EnvironmentConfigError("split", f"expected train or eval, got {split!r}")
        return [make_ticket(s, tuple(c.intents)) for s in seeds]

    def tasks(self, split: str) -> Iterable[Task]:
        return [ticket_task(t, split, self.config.system_prompt) for t in self.tickets(split)]

    async def step(self, episode: Episode) -> Step:
        ticket = make_ticket(int(episode.task.columns["ticket_seed"]), tuple(self.config.intents))
        agent_turns = [m["content"] for m in episode.messages[len(episode.task.prompt):] if m["role"] == "assistant"]
        state = replay(ticket, agent_turns, self.config.max_turns, self.config.max_errors)
        role, text = state.replies[-1]
        if state.outcome is None:
            return Step(done=False, reply=[{"role": role, "content": text}])
        return Step(done=True, reply=[{"role": role, "content": text}], outcome={
            "outcome": state.outcome.outcome, "reason": state.outcome.reason, "turns": len(agent_turns),
            "tool_calls": state.tool_calls, "errors": state.errors})
