"""The data that crosses actors: what a rollout worker returns, and what the learner and the
critic ranks are sent. Plain dataclasses, no torch, so every process can hold them.

Shape suffixes name the axes of batched fields, as in `trainer.algorithms`: `B` rows (samples),
`T` completion tokens (ragged: each row has its own length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from environments.base import Message, Task


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Completion:
    """One sampled completion. `token_ids` include the closing EOS when the model emitted one."""

    token_ids: list[int]
    logprobs: list[float]
    """The log-probability of each token under the distribution it was sampled from (after
    temperature and top-p); 0 on tokens the environment wrote."""
    text: str
    truncated: bool
    mask: list[bool] | None = None
    """Which tokens the policy sampled (the loss mask); None means all. Multi-turn episodes set
    it False on the tokens the environment wrote."""

    def loss_mask(self) -> list[bool]:
        return self.mask if self.mask is not None else [True] * len(self.token_ids)


@dataclass
class Sample:
    """One completion of a group, with everything the reward and the learner need."""

    task: Task
    group: int
    prompt_ids: list[int]
    completion: Completion
    weights_version: int
    outcome: dict[str, Any] = field(default_factory=dict)
    """What the environment recorded when the episode ended (multi-turn only)."""
    messages: list[Message] | None = None
    """Multi-turn only: the conversation after the prompt (assistant turns and replies)."""
    sampled_at: tuple[float, float] = (0.0, 0.0)
    """Wall-clock start and end (`time.time()`) of the worker's call that generated it."""


@dataclass(frozen=True)
class StepCounts:
    """Batch-wide counts every rank normalises its share of the loss by."""

    num_sequences: int
    num_tokens: int


@dataclass
class TokenBatch:
    """Prompts and completions as token ids, and which completion tokens count in the loss.
    On its own it is a supervised batch (the warm start); the subclasses add what RL needs."""

    prompt_ids_B: list[list[int]]
    """Each row's prompt token ids."""
    completion_ids_B_T: list[list[int]]
    mask_B_T: list[list[bool]]
    """False on tokens the environment wrote and on every token of a sample left out (failed
    reward, or truncated under DAPO's filter)."""

    def __len__(self) -> int:
        return len(self.prompt_ids_B)

    def rows(self, rows: list[int]) -> TokenBatch:
        """The batch restricted to `rows`, in that order (every per-row field follows; the rest is kept)."""
        return type(self)(**{name: [values[i] for i in rows] if isinstance(values, list) else values
                             for name, values in vars(self).items()})


@dataclass
class PolicyBatch(TokenBatch):
    """A policy-gradient step's share for one learner rank."""

    rollout_logprobs_B_T: list[list[float]] = field(default_factory=list)
    """The rollout engine's logprob of every completion token, as sampled."""
    old_logprobs_B_T: list[list[float]] | None = None
    """The learner's own logprob of every completion token at the weights that sampled it. None:
    this step's forward pass, which is at those weights when the batch is one optimizer step
    (PPO's epochs and mini-batches compute them first)."""
    advantages_B: list[float] | None = None
    """One advantage per sample (GRPO and the outcome-reward family) ..."""
    advantages_B_T: list[list[float]] | None = None
    """... or one per completion token (PPO's GAE). Exactly one of the two is set."""
    reference_point: float = 0.0
    """KTO's z: the policy's KL from the reference, measured on mismatched pairs before the step."""

    def __post_init__(self) -> None:
        if (self.advantages_B is None) == (self.advantages_B_T is None):
            raise ValueError("a PolicyBatch carries advantages_B or advantages_B_T, exactly one")


@dataclass
class ValueBatch(TokenBatch):
    """PPO's critic step: the values at rollout time (the clip's anchor) and the GAE returns."""

    old_values_B_T: list[list[float]] = field(default_factory=list)
    returns_B_T: list[list[float]] = field(default_factory=list)


@dataclass
class PolicyStepStats:
    """One learner rank's sums over one optimizer step of the policy; `combine` adds the ranks up
    and `metrics` turns the total into the step's logged figures (per token where it is a rate)."""

    loss: float = 0.0
    tokens: float = 0.0
    """Tokens in the loss (the mask's count)."""
    clipped_tokens: float = 0.0
    kl_sum: float = 0.0
    entropy_sum: float = 0.0
    mismatch_sum: float = 0.0
    """|log p_rollout - log p_old| summed over the sampled tokens: the rollout-learner mismatch."""
    mismatch_max: float = 0.0
    tis_capped: float = 0.0
    """Tokens whose truncated-importance-sampling weight hit its cap."""
    is_weight_sum: float = 0.0
    is_weight_min: float = float("inf")
    is_weight_max: float = 0.0
    grad_norm: float = 0.0
    """The global gradient norm (the same on every rank)."""

    @staticmethod
    def combine(ranks: list[PolicyStepStats]) -> PolicyStepStats:
        return PolicyStepStats(
            loss=sum(r.loss for r in ranks), tokens=sum(r.tokens for r in ranks),
            clipped_tokens=sum(r.clipped_tokens for r in ranks), kl_sum=sum(r.kl_sum for r in ranks),
            entropy_sum=sum(r.entropy_sum for r in ranks), mismatch_sum=sum(r.mismatch_sum for r in ranks),
            mismatch_max=max(r.mismatch_max for r in ranks), tis_capped=sum(r.tis_capped for r in ranks),
            is_weight_sum=sum(r.is_weight_sum for r in ranks),
            is_weight_min=min((r.is_weight_min for r in ranks if r.tokens), default=1.0),
            is_weight_max=max(r.is_weight_max for r in ranks), grad_norm=ranks[0].grad_norm)

    def metrics(self) -> dict[str, float]:
        """The loss, the share of tokens clipped, KL and entropy per token, and the rollout-learner
        mismatch (mean and max) with the share of tokens whose TIS weight was capped."""
        tokens = max(self.tokens, 1.0)
        return {"loss": self.loss, "clip_frac": self.clipped_tokens / tokens,
                "kl": self.kl_sum / tokens, "entropy": self.entropy_sum / tokens,
                "mismatch/logprob_diff_mean": self.mismatch_sum / tokens,
                "mismatch/logprob_diff_max": self.mismatch_max,
                "mismatch/tis_capped_frac": self.tis_capped / tokens,
                "is_weight/mean": self.is_weight_sum / tokens,
                "is_weight/min": self.is_weight_min, "is_weight/max": self.is_weight_max}
