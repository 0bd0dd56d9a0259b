"""What the loop and the learner ask of an algorithm, with the defaults most of them share.

An algorithm is built from its spec variant (`trainer.spec.algorithms`) and answers for itself:
its advantages, its per-token loss and how that loss is reduced, and the questions the loop
would otherwise settle by testing `type` — does it need a critic or a reference model, does it
refill groups whose rewards tie (DAPO), does it leave truncated completions out of the loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from trainer.algorithms.losses import aggregate, clipped_policy_loss, truncated_is_weight

if TYPE_CHECKING:
    from trainer.spec.algorithms import AlgorithmSpec


class Algorithm:
    """The clipped-ratio policy gradient with outcome advantages; subclasses give `advantages`."""

    needs_critic: ClassVar[bool] = False
    """PPO: a value model on its own ranks, and advantages from GAE over its values."""

    offline: ClassVar[bool] = False
    """Learns from logged traces (`trainer.algorithms.offline`) instead of its own rollouts."""

    def __init__(self, config: AlgorithmSpec, max_new_tokens: int):
        self.config = config
        self.loss_constant = config.loss_constant or max_new_tokens
        """Dr. GRPO's fixed normaliser (`loss_agg = "constant"`): a token budget."""

    @property
    def needs_reference(self) -> bool:
        """Whether the learner keeps a frozen copy of the base model for a KL term."""
        return self.config.kl_beta > 0

    @property
    def kl_in_loss(self) -> bool:
        """Whether the KL term is added to the per-token loss (else it goes into the reward)."""
        return self.needs_reference

    @property
    def reference_in_loss(self) -> bool:
        """Whether the learner computes the reference's logprobs for the loss (a KL term, or KTO)."""
        return self.kl_in_loss

    @property
    def refills_groups(self) -> bool:
        """DAPO's dynamic sampling: roll out more prompts until no group's rewards all tie."""
        return False

    @property
    def filters_truncated(self) -> bool:
        """Leave completions cut off at the token limit out of the loss."""
        return False

    def kl_controller(self):
        """A KL coefficient that adapts across steps (PPO's `kl_target`); None when it is fixed."""
        return None

    def shape_rewards(self, rewards_P_G: torch.Tensor, lengths_P_G: torch.Tensor,
                      max_new_tokens: int) -> torch.Tensor:
        """Rewards as the advantage sees them (DAPO adds its overlong punishment)."""
        return rewards_P_G

    def advantages(self, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
        """One advantage per completion, [P, G]; failed samples (`valid_P_G` False) get 0."""
        raise NotImplementedError(f"{type(self).__name__} computes no outcome advantages")

    def policy_loss(self, logprobs_B_T: torch.Tensor, old_logprobs_B_T: torch.Tensor, advantages: torch.Tensor,
                    mask_B_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss and where the clip was active. `advantages` is [B] (one per sample) or
        [B, T] (one per token, PPO)."""
        return clipped_policy_loss(logprobs_B_T, old_logprobs_B_T, advantages,
                                   self.config.clip_eps_low, self.config.clip_eps_high)

    def corrected_loss(self, logprobs_B_T: torch.Tensor, learner_old_B_T: torch.Tensor, rollout_B_T: torch.Tensor,
                       advantages: torch.Tensor, mask_B_T: torch.Tensor, reference_B_T: torch.Tensor | None = None,
                       reference_point: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`policy_loss` corrected for the rollout (another engine, dtype or older weights): per-token
        loss, where the clip was active, and each token's importance weight. (`reference_B_T`, the
        frozen reference's logprobs, and `reference_point` are for the losses that take them: KTO.)
        Without `tis_cap` the
        ratio is taken against the rollout's logprob, as sampled (weight 1); with it, against the
        learner's own at the start of the step, and each token is weighted by
        min(p_old / p_rollout, tis_cap)."""
        cap = self.config.tis_cap
        if cap is None or cap == "auto":  # "auto" is resolved by the job spec; unresolved, it is off
            loss_B_T, clipped_B_T = self.policy_loss(logprobs_B_T, rollout_B_T, advantages, mask_B_T)
            return loss_B_T, clipped_B_T, torch.ones_like(loss_B_T).detach()
        loss_B_T, clipped_B_T = self.policy_loss(logprobs_B_T, learner_old_B_T, advantages, mask_B_T)
        weight_B_T = truncated_is_weight(learner_old_B_T, rollout_B_T, cap)
        return loss_B_T * weight_B_T, clipped_B_T, weight_B_T

    def reduce(self, per_token_B_T: torch.Tensor, mask_B_T: torch.Tensor, num_sequences: int,
               num_tokens: int) -> torch.Tensor:
        """The scalar loss, normalised by the whole step's counts (`loss_agg`)."""
        return aggregate(per_token_B_T, mask_B_T, self.config.loss_agg, num_sequences, num_tokens,
                         self.loss_constant)
