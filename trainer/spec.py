"""The job spec: one pydantic schema shared by `python -m trainer.run`, run files in `configs/`
and the REST API.

Pure pydantic on purpose: the control plane imports this module, and it must start without torch.
Every field has a docstring, every variant is a discriminated union on `type`, and cross-field
rules live in validators so that a bad spec is refused once, up front, with the field named:

    spec = load_spec("configs/demo.toml")          # SpecError lists every bad field
    spec = JobSpec.model_validate(payload)          # pydantic.ValidationError
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    # Unknown keys are refused, so a knob of the wrong algorithm or a typo is named, not ignored.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelSpec(_Strict):
    path: str = Field(min_length=1)
    """Base model: a local directory in Hugging Face format, or a hub id (the machine must reach the hub)."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype of the policy. CPU runs use float32."""


class EnvironmentSpec(_Strict):
    name: str = "dataset"
    """Environment from the registry (`dataset`, ...) — see `environments.registry`."""

    config: dict[str, Any] = Field(default_factory=dict)
    """The environment's own config; validated by the environment's config model."""


class RewardSpec(_Strict):
    name: str | None = None
    """Built-in or entry-point reward module (`GET /v1/rewards` lists them)."""

    import_path: str | None = None
    """Ad-hoc reward function, `package.module:function` or `path/to/file.py:function`."""

    weight: float = 1.0
    """Weight of this module in the summed reward."""

    config: dict[str, Any] = Field(default_factory=dict)
    """Parameters for a module that declares a config model."""

    timeout_s: float = Field(default=30.0, gt=0)
    """Time limit for one batched call; past it the batch's samples are marked failed."""

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if (self.name is None) == (self.import_path is None):
            raise ValueError("set exactly one of `name` (registered module) or `import_path` (pkg.mod:fn)")
        if self.import_path is not None and ":" not in self.import_path:
            raise ValueError("import_path must look like `package.module:function` or `file.py:function`")
        return self

    @property
    def label(self) -> str:
        """The name metrics and errors use for this module."""
        return self.name or self.import_path.rsplit(":", 1)[1]  # type: ignore[union-attr]


class _PolicyGradient(_Strict):
    group_size: int = Field(default=8, ge=2)
    """Completions sampled per prompt. A group of one has no baseline, hence >= 2."""

    clip_eps_low: float = Field(default=0.2, gt=0, lt=1)
    """Lower clip of the importance ratio: ratio >= 1 - clip_eps_low."""

    clip_eps_high: float = Field(default=0.2, gt=0)
    """Upper clip of the ratio: ratio <= 1 + clip_eps_high (DAPO's clip-higher uses 0.28)."""

    loss_agg: Literal["token_mean", "sequence_mean", "constant"] = "token_mean"
    """How per-token losses are reduced: over all tokens of the batch, per sequence then over
    sequences (original GRPO), or divided by a constant (Dr. GRPO)."""

    loss_constant: int | None = Field(default=None, gt=0)
    """Normaliser for `loss_agg = "constant"`; defaults to `rollout.max_new_tokens`."""

    kl_beta: float = Field(default=0.0, ge=0)
    """Weight of the k3 KL penalty against the frozen reference (the base model). 0 turns it off
    and no reference model is loaded."""


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
    group_size: int = Field(default=4, ge=1)
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
    clip_eps_high: float = Field(default=0.28, gt=0)
    """Upper clip of the ratio (clip-higher)."""

    loss_agg: Literal["token_mean"] = "token_mean"
    """Fixed: the loss is averaged over every token of the batch."""

    dynamic_sampling: bool = True
    """Drop groups whose rewards all tie and roll out more prompts until the batch is full."""

    max_sampling_rounds: int = Field(default=3, ge=1)
    """Rollout rounds per step at most; a batch still short after them is topped up with tied
    groups (which get zero advantage) and the shortfall is logged."""

    overlong_buffer: int = Field(default=0, ge=0)
    """Soft overlong punishment over the last N tokens of `rollout.max_new_tokens` (0: off)."""

    overlong_penalty: float = Field(default=1.0, ge=0)
    """The punishment at the token limit."""

    filter_truncated: bool = True
    """Leave completions cut off at the token limit out of the loss."""


class GSPOSpec(_PolicyGradient):
    """GSPO (Zheng et al., 2025): one importance ratio per sequence, clipped; group-normalised
    advantages as in GRPO."""

    type: Literal["gspo"] = "gspo"
    clip_eps_low: float = Field(default=3e-4, gt=0, lt=1)
    """Lower clip of the sequence ratio (the paper uses 3e-4)."""

    clip_eps_high: float = Field(default=4e-4, gt=0)
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
    group_size: int = Field(default=1, ge=1)
    """Completions per prompt (the critic is the baseline, so 1 is enough)."""

    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount per token."""

    lam: float = Field(default=0.95, ge=0, le=1)
    """GAE's lambda: 0 is one-step TD, 1 is the Monte-Carlo return."""

    ppo_epochs: int = Field(default=2, ge=1)
    """Passes over each rollout batch."""

    mini_batches: int = Field(default=2, ge=1)
    """Optimizer steps per pass (the batch is split into this many mini-batches)."""

    value_clip: float = Field(default=0.2, gt=0)
    """How far a value may move from its rollout-time estimate before the loss stops pulling."""

    critic_lr: float = Field(default=1e-5, gt=0)
    """The critic's learning rate."""

    critic_ranks: int | None = Field(default=None, ge=1)
    """DeepSpeed ranks of the critic; default: as many as `learner.ranks`."""

    kl_mode: Literal["reward", "loss"] = "reward"
    """KL against the reference as a per-token reward penalty (k1, InstructGPT) or as a k3 loss
    term (as GRPO does). Only with `kl_beta > 0`."""

    kl_target: float | None = Field(default=None, gt=0)
    """With `kl_mode = "reward"`: adapt the coefficient towards this KL per token (None: fixed)."""

    kl_horizon: int = Field(default=10000, ge=1)
    """Samples over which the adaptive coefficient moves by at most 20 %."""


ALGORITHM_SPECS = (GRPOSpec, DrGRPOSpec, RLOOSpec, ReinforcePPSpec, DAPOSpec, GSPOSpec, PPOSpec)
ALGORITHM_TAGS = {cls.model_fields["type"].default for cls in ALGORITHM_SPECS}
AlgorithmSpec = Annotated[GRPOSpec | DrGRPOSpec | RLOOSpec | ReinforcePPSpec | DAPOSpec | GSPOSpec | PPOSpec,
                          Field(discriminator="type")]


class RolloutSpec(_Strict):
    engine: Literal["hf"] = "hf"
    """Generation engine. `hf` (transformers generate) runs anywhere; vLLM arrives with the GPU path."""

    workers: int = Field(default=2, ge=1)
    """Rollout worker actors; prompts are split evenly across them."""

    prompts_per_step: int = Field(default=4, ge=1)
    """Tasks sampled per training step; each yields `algorithm.group_size` completions."""

    max_new_tokens: int = Field(default=16, ge=1)
    """Token budget per completion."""

    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature; the learner divides its logits by the same value."""

    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling mass."""

    num_cpus: float = Field(default=0.4, gt=0)
    """Ray CPUs each worker reserves (fractional, so small machines fit every actor)."""


class LearnerSpec(_Strict):
    ranks: int = Field(default=2, ge=1)
    """DeepSpeed data-parallel ranks (one Ray actor each)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage."""

    lr: float = Field(default=1e-5, gt=0)
    """AdamW learning rate."""

    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""

    micro_batch: int = Field(default=8, ge=1)
    """Sequences per forward/backward on one rank; the rest is gradient accumulation."""

    grad_clip: float = Field(default=1.0, gt=0)
    """Global gradient-norm clip."""

    num_cpus: float = Field(default=0.4, gt=0)
    """Ray CPUs each rank reserves."""


class ScheduleSpec(_Strict):
    steps: int = Field(default=20, ge=1)
    """Training steps (one rollout batch and one optimizer step each)."""

    checkpoint_interval: int = Field(default=10, ge=0)
    """Save a resumable checkpoint every N steps (and at the end); 0 saves only at the end."""

    eval_interval: int = Field(default=0, ge=0)
    """Run evaluation every N steps; 0 turns periodic evaluation off."""

    eval_before_after: bool = True
    """Evaluate before the first RL step (after any warm start) and after the last; the two are
    the job's result. Needs an environment with an eval split."""

    seed: int = 0
    """Seed for data order and sampling; a resumed run continues the same streams."""


class WarmStartSpec(_Strict):
    data: str = Field(min_length=1)
    """Demonstration conversations: JSONL, one `{"messages": [...]}` chat per line. The model is
    trained on the assistant turns only; the system, user and tool messages are context."""

    epochs: float = Field(default=1.0, gt=0)
    """Passes over the demonstrations (fractions allowed)."""

    lr: float = Field(default=1e-4, gt=0)
    """Learning rate of the supervised stage (the RL stage then uses `learner.lr`)."""


class LoggingSpec(_Strict):
    wandb_project: str = "flywheel"
    """wandb project the run is logged to."""

    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """`offline` writes local files (no account needed), `online` syncs, `disabled` logs nothing."""


class JobSpec(_Strict):
    name: str = Field(default="job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Run name: letters, digits, `_`, `.`, `-`; names the output folder and the wandb run."""

    model: ModelSpec
    """The base (and reference) model."""

    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    """Where tasks come from and, for multi-turn work, who answers the policy."""

    rewards: list[RewardSpec] = Field(min_length=1)
    """Reward modules, summed with their weights; each component is logged."""

    reward_failure_threshold: float = Field(default=0.25, ge=0, le=1)
    """A step in which more than this share of a module's samples fail stops the job."""

    algorithm: AlgorithmSpec = Field(default_factory=GRPOSpec)
    """The policy-gradient algorithm and its knobs (`type` selects it)."""

    warm_start: WarmStartSpec | None = None
    """A supervised stage on demonstrations before RL; none by default."""

    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    learner: LearnerSpec = Field(default_factory=LearnerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    logging: LoggingSpec = Field(default_factory=LoggingSpec)

    output_dir: str = "runs"
    """Checkpoints, the exported model and wandb files go to `output_dir/name`."""

    @model_validator(mode="before")
    @classmethod
    def _grpo_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("algorithm"), dict) and "type" not in data["algorithm"]:
            data = {**data, "algorithm": {"type": "grpo", **data["algorithm"]}}
        return data

    @model_validator(mode="after")
    def _batch_divides(self) -> JobSpec:
        samples = self.rollout.prompts_per_step * self.algorithm.group_size
        ranks = {"learner.ranks": self.learner.ranks}
        if self.algorithm.type == "ppo":
            ranks["algorithm.critic_ranks"] = self.algorithm.critic_ranks or self.learner.ranks
        for field, n in ranks.items():
            if samples % n:
                raise ValueError(f"{field}: {samples} samples per step (prompts_per_step × group_size) "
                                 f"must split evenly over {n} ranks")
            per_rank = samples // n // self.mini_batches
            if per_rank == 0 or per_rank % self.learner.micro_batch or (samples // n) % self.mini_batches:
                what = f"each rank gets {samples // n} samples per step"
                if self.mini_batches > 1:
                    what += f" in {self.mini_batches} mini-batches ({samples // n / self.mini_batches:g} each)"
                raise ValueError(f"learner.micro_batch: {what}, which must be a multiple of "
                                 f"micro_batch={self.learner.micro_batch}")
        return self

    @property
    def mini_batches(self) -> int:
        """Optimizer steps per rollout batch and epoch (PPO's mini-batches; 1 otherwise)."""
        return getattr(self.algorithm, "mini_batches", 1)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


class SpecError(ValueError):
    """A spec that failed validation; `errors` holds one `{field, message}` per problem."""

    def __init__(self, errors: list[dict[str, str]], source: str = "spec"):
        self.errors = errors
        lines = "\n".join(f"  {e['field'] or '(spec)'}: {e['message']}" for e in errors)
        super().__init__(f"invalid {source}:\n{lines}")


def describe_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Flatten a pydantic error into `{field, message}` rows with dotted field paths.

    Discriminated-union tags (`grpo`) are dropped from the path, so a user reads
    `algorithm.group_size`, the key they wrote.
    """
    rows = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p not in ALGORITHM_TAGS]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (not part of this section's schema)"
        field = ".".join(loc)
        # Cross-field validators name the field they blame as a `path: ` prefix of the message.
        prefix, sep, rest = message.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)*", prefix):
            field, message = ".".join(filter(None, [field, prefix])), rest
        rows.append({"field": field, "message": message})
    return rows


def parse_spec(data: dict[str, Any], source: str = "spec") -> JobSpec:
    """Validate a mapping into a JobSpec, raising SpecError with every bad field named."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(describe_errors(exc), source) from None


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read a TOML, YAML or JSON run file; `overrides` are dotted keys (`schedule.steps`)."""
    path = Path(path)
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = tomllib.loads(text)
    elif suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    elif suffix == ".json":
        data = json.loads(text)
    else:
        raise SpecError([{"field": "", "message": f"unknown run-file type {suffix!r}; "
                          "expected .toml, .yaml, .yml or .json"}], str(path))
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_spec(data, str(path))
