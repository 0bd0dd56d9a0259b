"""The `algorithm` section of the job spec: one sub-model per algorithm, a discriminated union on
`type`. Pure pydantic (the control plane imports it); each variant's behaviour is the object of
the same name in `trainer.algorithms`, which also says how to add one."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator


def _tis_cap(value: object) -> float | str | None:
    """One message for every wrong value, instead of one per member of the union."""
    if value is None or value == "auto":
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 1:
        return float(value)
    raise ValueError(f'expected a number >= 1, "auto" or null, got {value!r}')


TISCap = Annotated[float | Literal["auto"] | None,
                   PlainValidator(_tis_cap, json_schema_input_type=float | Literal["auto"] | None)]


class StrictModel(BaseModel):
    """Every section of the job spec: unknown keys are refused, so a typo or a knob of another
    algorithm is named, not ignored; numbers are finite (every field is bounded too, so any value
    fits a 64-bit column); names and paths hold no control characters (a NUL byte in a path
    breaks every file call)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a control character (NUL, newline, ...) is not allowed here")
        return value


class _PolicyGradient(StrictModel):
    offline: ClassVar[bool] = False
    fits_classifier: ClassVar[bool] = False
    """On-policy: samples are rolled out by the policy being trained."""

    group_size: int = Field(default=8, ge=2, le=1024)
    """Completions sampled per prompt. A group of one has no baseline, hence >= 2."""

    clip_eps_low: float = Field(default=0.2, gt=0, lt=1)
    """Lower clip of the importance ratio: ratio >= 1 - clip_eps_low."""

    clip_eps_high: float = Field(default=0.2, gt=0, le=100)
    """Upper clip of the ratio: ratio <= 1 + clip_eps_high (DAPO's clip-higher uses 0.28)."""

    loss_agg: Literal["token_mean", "sequence_mean", "constant"] = "token_mean"
    """How per-token losses are reduced: over all tokens of the batch, per sequence then over
    sequences (original GRPO), or divided by a constant (Dr. GRPO)."""

    loss_constant: int | None = Field(default=None, gt=0, le=2**31 - 1)
    """Normaliser for `loss_agg = "constant"`; defaults to `rollout.max_new_tokens`."""

    kl_beta: float = Field(default=0.0, ge=0, le=1e6)
    """Weight of the k3 KL penalty against the frozen reference (the base model). 0 turns it off
    and no reference model is loaded."""

    tis_cap: TISCap = "auto"
    """Truncated importance sampling against the rollout engine's logprobs: each token's loss is
    weighted by min(p_learner / p_rollout, tis_cap), both at the weights that sampled it, and the
    ratio is taken against the learner's own logprob. None turns it off; "auto" (the default) is 2
    with the vLLM engine and off with the HF engine, whose logprobs are the learner's own."""

    @property
    def mini_batch_count(self) -> int:
        """Optimizer steps per rollout batch and epoch."""
        return 1

    def critic_world_size(self, learner_ranks: int) -> int:
        """DeepSpeed ranks of a value model; 0 for the critic-free algorithms."""
        return 0


class GRPOSpec(_PolicyGradient):
    """Group Relative Policy Optimization (Shao et al., 2024)."""

    type: Literal["grpo"] = "grpo"
    scale_std: bool = True
    """Divide the group-centred reward by the group's std (off in Dr. GRPO)."""


class RLOOSpec(_PolicyGradient):
    """REINFORCE Leave-One-Out (Ahmadian et al., 2024): baseline is the mean of the other samples."""

    type: Literal["rloo"] = "rloo"


class DrGRPOSpec(_PolicyGradient):
    """Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training"): GRPO without the two
    length and difficulty biases: no std scaling, and a constant loss normaliser."""

    type: Literal["dr_grpo"] = "dr_grpo"
    scale_std: Literal[False] = False
    """Fixed by the preset: the group-centred reward is not divided by the group's std."""

    loss_agg: Literal["constant"] = "constant"
    """Fixed by the preset: per-token losses are summed and divided by N × loss_constant."""


class ReinforcePPSpec(_PolicyGradient):
    """REINFORCE++ (Hu et al., 2025): rewards whitened over the whole batch; with `baseline`,
    the group mean is subtracted first (REINFORCE++-baseline)."""

    type: Literal["reinforce_pp"] = "reinforce_pp"
    group_size: int = Field(default=4, ge=1, le=1024)
    """Completions per prompt; 1 is allowed (the batch, not the group, is the baseline), but
    `baseline = true` needs at least 2."""

    baseline: bool = False
    """Subtract each group's mean reward before the batch whitening."""

    @model_validator(mode="after")
    def _baseline_needs_a_group(self) -> ReinforcePPSpec:
        if self.baseline and self.group_size < 2:
            raise ValueError("group_size: the group-mean baseline needs group_size >= 2")
        return self


class DAPOSpec(_PolicyGradient):
    """DAPO (Yu et al., 2025): clip-higher, token-level loss, dynamic sampling, overlong reward
    shaping and filtering of truncated completions."""

    type: Literal["dapo"] = "dapo"
    clip_eps_high: float = Field(default=0.28, gt=0, le=100)
    """Upper clip of the ratio (clip-higher)."""

    loss_agg: Literal["token_mean"] = "token_mean"
    """Fixed: the loss is averaged over every token of the batch."""

    dynamic_sampling: bool = True
    """Drop groups whose rewards all tie and roll out more prompts until the batch is full."""

    max_sampling_rounds: int = Field(default=3, ge=1, le=100)
    """Rollout rounds per step at most; a batch still short after them is topped up with tied
    groups (which get zero advantage) and the shortfall is logged."""

    overlong_buffer: int = Field(default=0, ge=0, le=131_072)
    """Soft overlong punishment over the last N tokens of `rollout.max_new_tokens` (0: off)."""

    overlong_penalty: float = Field(default=1.0, ge=0, le=1e6)
    """The punishment at the token limit."""

    filter_truncated: bool = True
    """Leave completions cut off at the token limit out of the loss."""


class GSPOSpec(_PolicyGradient):
    """GSPO (Zheng et al., 2025): one importance ratio per sequence, clipped; group-normalised
    advantages as in GRPO."""

    type: Literal["gspo"] = "gspo"
    clip_eps_low: float = Field(default=3e-4, gt=0, lt=1)
    """Lower clip of the sequence ratio (the paper uses 3e-4)."""

    clip_eps_high: float = Field(default=4e-4, gt=0, le=100)
    """Upper clip of the sequence ratio (the paper uses 4e-4)."""

    loss_agg: Literal["sequence_mean"] = "sequence_mean"
    """Fixed: the sequence-level loss is averaged per sequence, then over sequences."""

    scale_std: bool = True
    """Divide the group-centred reward by the group's std."""


class PPOSpec(_PolicyGradient):
    """PPO with a critic (Schulman et al., 2017): a value model initialised from the base model,
    trained by its own DeepSpeed ranks; GAE; clipped value loss; several epochs of mini-batches
    per rollout batch; KL to the reference as a per-token reward penalty or as a loss term."""

    type: Literal["ppo"] = "ppo"
    group_size: int = Field(default=1, ge=1, le=1024)
    """Completions per prompt (the critic is the baseline, so 1 is enough)."""

    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount per token."""

    lam: float = Field(default=0.95, ge=0, le=1)
    """GAE's lambda: 0 is one-step TD, 1 is the Monte-Carlo return."""

    ppo_epochs: int = Field(default=2, ge=1, le=1000)
    """Passes over each rollout batch."""

    mini_batches: int = Field(default=2, ge=1, le=65_536)
    """Optimizer steps per pass (the batch is split into this many mini-batches)."""

    value_clip: float = Field(default=0.2, gt=0, le=1e6)
    """How far a value may move from its rollout-time estimate before the loss stops pulling."""

    critic_lr: float = Field(default=1e-5, gt=0, le=1)
    """The critic's learning rate."""

    critic_ranks: int | None = Field(default=None, ge=1, le=1024)
    """DeepSpeed ranks of the critic; default: as many as `learner.ranks`."""

    kl_mode: Literal["reward", "loss"] = "reward"
    """KL against the reference as a per-token reward penalty (k1, InstructGPT) or as a k3 loss
    term (as GRPO does). Only with `kl_beta > 0`."""

    kl_target: float | None = Field(default=None, gt=0, le=1e6)
    """With `kl_mode = "reward"`: adapt the coefficient towards this KL per token (None: fixed)."""

    kl_horizon: int = Field(default=10000, ge=1, le=2**31 - 1)
    """Samples over which the adaptive coefficient moves by at most 20 %."""

    @property
    def mini_batch_count(self) -> int:
        return self.mini_batches

    def critic_world_size(self, learner_ranks: int) -> int:
        return self.critic_ranks or learner_ranks


class _FromTraces(StrictModel):
    """Learning from logged production traces (the `traces` environment): one sample per trace,
    scored by its outcome; nothing is rolled out, so there are no groups and no rollout engine to
    correct for."""

    offline: ClassVar[bool] = True
    fits_classifier: ClassVar[bool] = False
    group_size: ClassVar[int] = 1
    kl_beta: ClassVar[float] = 0.0
    tis_cap: ClassVar[None] = None
    loss_constant: ClassVar[None] = None
    mini_batch_count: ClassVar[int] = 1

    def critic_world_size(self, learner_ranks: int) -> int:
        return 0


class OfflinePGSpec(_FromTraces):
    """Policy gradient from the logged behaviour logprobs, each token weighted by the truncated
    ratio pi / pi_behaviour (Cursor Tab's and Tinker's importance-sampling loss)."""

    type: Literal["offline_pg"] = "offline_pg"
    is_cap: float = Field(default=2.0, ge=1, le=1e6)
    """C: each token's importance weight pi / pi_behaviour is at most this."""

    baseline: Literal["batch", "group"] = "batch"
    """The reward subtracted: the batch's mean, or the mean of the traces with the same
    `group_column` value (tickets of the same kind)."""

    group_column: str | None = Field(default=None, min_length=1, max_length=200)
    """With `baseline = "group"`: the trace's metadata or outcome key that groups similar traces."""

    behaviour: Literal["logged", "base"] = "logged"
    """Where pi_behaviour comes from: the logprobs logged with each trace (a trace without them is
    refused), or the base model's own, when the base model is the one that wrote the traces."""

    @model_validator(mode="after")
    def _group_needs_a_column(self) -> OfflinePGSpec:
        if (self.baseline == "group") != (self.group_column is not None):
            raise ValueError('group_column: give it exactly when baseline = "group"')
        return self


class KTOSpec(_FromTraces):
    """Kahneman-Tversky Optimization (Ethayarajh et al., 2024), TRL's KTO objective: unpaired
    desirable and undesirable outcomes against a frozen reference (the base model)."""

    type: Literal["kto"] = "kto"
    beta: float = Field(default=0.1, gt=0, le=1e3)
    """How far from the reference the policy may move (TRL's `beta`)."""

    desirable_weight: float = Field(default=1.0, gt=0, le=1e6)
    undesirable_weight: float = Field(default=1.0, gt=0, le=1e6)
    """lambda_D and lambda_U: weigh them so that lambda_D n_D / (lambda_U n_U) is in [1, 4/3]."""

    desirable_at: float = Field(default=0.5, ge=-1e6, le=1e6)
    """A trace whose reward is at least this is desirable; the rest are undesirable."""


class FilteredSFTSpec(_FromTraces):
    """Supervised learning on the successful traces only (reward >= `min_reward`): the baseline."""

    type: Literal["filtered_sft"] = "filtered_sft"
    min_reward: float = Field(default=0.5, ge=-1e6, le=1e6)
    """A trace whose reward is at least this is learnt from; the rest are left out."""


OutcomeLabel = str | bool | float


class OutcomeModelSpec(_FromTraces):
    """Not a policy: fit an outcome model on the traces, a sequence classifier (the base model with
    a fresh scalar head) that predicts from a conversation whether its outcome label is one of the
    `positive` values. A share of the traces is held out to measure its AUC and calibration; the
    export is a Hugging Face sequence-classification folder that the `outcome_model` reward module
    scores new conversations with (`trainer/outcome_model.py`)."""

    type: Literal["outcome_model"] = "outcome_model"
    fits_classifier: ClassVar[bool] = True

    label: str = Field(default="outcome", min_length=1, max_length=200)
    """The outcome label predicted (`outcome`, `accepted`, ...)."""

    positive: list[OutcomeLabel] = Field(default=["resolved"], min_length=1, max_length=100)
    """The label's values that count as the good outcome; every other value is the bad one, and a
    trace without the label is left out."""

    holdout: float = Field(default=0.2, gt=0, lt=1)
    """Share of the traces held out to measure the model (chosen by a hash of each trace's id, so
    the same trace is always on the same side)."""

    max_tokens: int = Field(default=1024, ge=16, le=1_048_576)
    """Longest conversation read, in tokens; a longer one keeps its last `max_tokens` (the end,
    where outcomes show)."""


ONLINE_SPECS = (GRPOSpec, DrGRPOSpec, RLOOSpec, ReinforcePPSpec, DAPOSpec, GSPOSpec, PPOSpec)
OFFLINE_SPECS = (OfflinePGSpec, KTOSpec, FilteredSFTSpec)
ALGORITHM_SPECS = ONLINE_SPECS + OFFLINE_SPECS + (OutcomeModelSpec,)
ALGORITHM_TAGS = {cls.model_fields["type"].default for cls in ALGORITHM_SPECS}
POLICY_TAGS = ALGORITHM_TAGS - {"outcome_model"}
"""The algorithms that train a policy (each an object in `trainer.algorithms`)."""
AlgorithmSpec = Annotated[GRPOSpec | DrGRPOSpec | RLOOSpec | ReinforcePPSpec | DAPOSpec | GSPOSpec | PPOSpec
                          | OfflinePGSpec | KTOSpec | FilteredSFTSpec | OutcomeModelSpec, Field(discriminator="type")]
