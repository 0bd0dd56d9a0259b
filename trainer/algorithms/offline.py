"""Learning from logged outcomes: production traces, written by a deployed (behaviour) policy mu
and scored by what happened after, not sampled by the policy being trained.

`offline_pg`: policy gradient with a truncated importance weight against mu, per token t of trace i
(Cursor Tab's policy gradient on accepted / rejected suggestions; Tinker's `importance_sampling`
loss, which has no cap; the truncation is IMPALA's, Espeholt et al., 2018):

    w_t = min(pi(y_t) / mu(y_t), C)                (detached)
    A_i = r_i - b                                   (b: the batch's mean reward, or the mean of i's group)
    l_t = -w_t * A_i * log pi(y_t)

so d l_t / d log pi = -w_t * A_i: the on-policy gradient when pi = mu, and never more than C times
it where pi has moved off the logged tokens.

`kto`: Kahneman-Tversky Optimization (Ethayarajh et al., 2024, eq. 7), TRL's `KTOTrainer`
objective, for unpaired desirable / undesirable outcomes. With rho_i = sum_t log pi(y_t) - log
ref(y_t) and the reference point z = max(0, mean rho over mismatched prompt-completion pairs),
detached:

    l_i = lambda_D * (1 - sigmoid(beta * (rho_i - z)))     desirable outcome
          lambda_U * (1 - sigmoid(beta * (z - rho_i)))     undesirable outcome

and the loss is the mean of l_i over the batch (give l_i to each of i's tokens and reduce with
`sequence_mean`: then d l / d log pi(y_t) is d l_i / d rho_i for every token, KTO's gradient).

`filtered_sft`: the negative log-likelihood of the traces whose reward reaches a threshold, the
rest left out (the baseline every method that uses the failures has to beat).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.algorithms.base import Algorithm
from trainer.algorithms.losses import aggregate

if TYPE_CHECKING:
    from trainer.spec.algorithms import FilteredSFTSpec, KTOSpec, OfflinePGSpec


def offline_advantages(rewards_B: torch.Tensor, valid_B: torch.Tensor, groups_B: list | None = None) -> torch.Tensor:
    """A_i = r_i minus the mean reward of the valid traces in the batch, or in i's group when
    `groups_B` names one per trace (tickets of the same kind); invalid traces get 0."""
    advantages_B = torch.zeros_like(rewards_B)
    keys = groups_B if groups_B is not None else [None] * len(rewards_B)
    for key in set(keys):
        rows_B = torch.tensor([k == key for k in keys]) & valid_B
        if rows_B.any():
            advantages_B[rows_B] = rewards_B[rows_B] - rewards_B[rows_B].mean()
    return advantages_B


def truncated_is_pg_loss(logprobs_B_T: torch.Tensor, behaviour_B_T: torch.Tensor, advantages_B: torch.Tensor,
                         cap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss -w_t * A_i * log pi(y_t), where the weight was capped, and each weight w_t."""
    weight_B_T = torch.exp(logprobs_B_T.detach() - behaviour_B_T).clamp(max=cap)
    loss_B_T = -weight_B_T * advantages_B.unsqueeze(1) * logprobs_B_T
    return loss_B_T, weight_B_T >= cap, weight_B_T


def kto_losses(policy_B: torch.Tensor, reference_B: torch.Tensor, desirable_B: torch.Tensor,
               reference_point: float, beta: float, desirable_weight: float,
               undesirable_weight: float) -> torch.Tensor:
    """KTO's loss per sequence from the sequence logprobs under the policy and the reference."""
    rho_B = policy_B - reference_B
    z = max(reference_point, 0.0)
    desirable_loss_B = desirable_weight * (1 - torch.sigmoid(beta * (rho_B - z)))
    undesirable_loss_B = undesirable_weight * (1 - torch.sigmoid(beta * (z - rho_B)))
    return torch.where(desirable_B, desirable_loss_B, undesirable_loss_B)


class _Offline(Algorithm):
    """From traces: one sample per trace (no groups), and no rollout engine to correct for. The
    learner's `rollout` logprobs are the behaviour policy's, as logged."""

    offline = True
    needs_reference_point = False
    """KTO: the driver measures the reference point z on mismatched pairs before the step."""

    def keeps(self, rewards_B: torch.Tensor) -> torch.Tensor:
        """Which traces count in the loss; failed rewards are left out besides."""
        return torch.ones_like(rewards_B, dtype=torch.bool)

    def trace_advantages(self, rewards_B: torch.Tensor, valid_B: torch.Tensor, groups_B: list | None) -> torch.Tensor:
        """One number per trace [B] that the loss takes as its advantage; invalid traces get 0."""
        raise NotImplementedError

    def reduce(self, per_token_B_T, mask_B_T, num_sequences, num_tokens):
        """The mean over every learned-from token of the batch."""
        return aggregate(per_token_B_T, mask_B_T, "token_mean", num_sequences, num_tokens, 1)


class OfflinePG(_Offline):
    config: OfflinePGSpec

    def trace_advantages(self, rewards_B, valid_B, groups_B):
        return offline_advantages(rewards_B, valid_B, groups_B)

    def corrected_loss(self, logprobs_B_T, learner_old_B_T, rollout_B_T, advantages, mask_B_T, reference_B_T=None,
                       reference_point=0.0):
        return truncated_is_pg_loss(logprobs_B_T, rollout_B_T, advantages, self.config.is_cap)


class KTO(_Offline):
    config: KTOSpec

    @property
    def needs_reference(self) -> bool:
        return True

    @property
    def kl_in_loss(self) -> bool:
        return False

    @property
    def reference_in_loss(self) -> bool:
        return True

    needs_reference_point = True

    def trace_advantages(self, rewards_B, valid_B, groups_B):
        """+1 for a desirable outcome (reward >= `desirable_at`), -1 for an undesirable one: the sign
        is all KTO takes from the reward."""
        desirable_B = rewards_B >= self.config.desirable_at
        return torch.where(valid_B, torch.where(desirable_B, 1.0, -1.0), 0.0)

    def corrected_loss(self, logprobs_B_T, learner_old_B_T, rollout_B_T, advantages, mask_B_T, reference_B_T=None,
                       reference_point=0.0):
        c = self.config
        policy_B = (logprobs_B_T * mask_B_T).sum(1)
        reference_B = (reference_B_T * mask_B_T).sum(1)
        losses_B = kto_losses(policy_B, reference_B, advantages > 0, reference_point, c.beta, c.desirable_weight,
                              c.undesirable_weight)
        per_token_B_T = losses_B.unsqueeze(1).expand_as(logprobs_B_T)
        weight_B_T = torch.ones_like(logprobs_B_T)
        return per_token_B_T, torch.zeros_like(mask_B_T), weight_B_T

    def reduce(self, per_token_B_T, mask_B_T, num_sequences, num_tokens):
        return aggregate(per_token_B_T, mask_B_T, "sequence_mean", num_sequences, num_tokens, 1)


class FilteredSFT(_Offline):
    config: FilteredSFTSpec

    def keeps(self, rewards_B: torch.Tensor) -> torch.Tensor:
        return rewards_B >= self.config.min_reward

    def trace_advantages(self, rewards_B, valid_B, groups_B):
        return valid_B.float()

    def corrected_loss(self, logprobs_B_T, learner_old_B_T, rollout_B_T, advantages, mask_B_T, reference_B_T=None,
                       reference_point=0.0):
        return -logprobs_B_T, torch.zeros_like(mask_B_T), torch.ones_like(logprobs_B_T)
