"""The policy's DeepSpeed learner ranks: one Ray actor per data-parallel rank, together one
torch.distributed group (gloo on CPU, NCCL on GPU). See docs/architecture.md, "Processes".

Each rank gets an equal share of the step's samples, runs them in micro-batches with DeepSpeed's
gradient accumulation, and all ranks take one optimizer step. The loss of every micro-batch is
normalised by the *whole step's* sequence and token counts (`DeepSpeedRank._backward` says why
the sum is then exactly the full-batch gradient, whichever split the batch had).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.actors.deepspeed_rank import DeepSpeedRank, MicroBatch
from trainer.actors.lora import merged_state_dict, tied_copies, with_lora
from trainer.algorithms import build_algorithm
from trainer.algorithms.losses import aggregate, k3_kl, token_logprobs_and_entropy
from trainer.engines.head import contiguous_head_input
from trainer.types import PolicyBatch, PolicyStepStats, StepCounts, TokenBatch


class Learner(DeepSpeedRank):
    """Wrapped with `ray.remote` by the cluster. `address()` on rank 0 first, then `setup()` on all."""

    def setup(self, master: tuple[str, int], model_path: str, dtype: str, learner, algorithm,
              temperature: float, max_new_tokens: int, per_rank: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._join(master)
        self.algorithm = build_algorithm(algorithm, max_new_tokens)
        self.temperature, self.zero_stage, self.rl_lr = temperature, learner.zero_stage, learner.lr
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch_dtype = getattr(torch, dtype)
        model = contiguous_head_input(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype))
        self.lora = learner.lora is not None
        if self.lora:
            model = with_lora(model, learner.lora)
        self.reference = None
        if self.algorithm.needs_reference and not self.lora:  # with LoRA: the base, adapters off
            self.reference = contiguous_head_input(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype))
            self.reference.eval()
            self.reference.requires_grad_(False)
        self._start_engine(model, learner, learner.lr, per_rank, dtype, self.tokenizer.pad_token_id)
        if self.reference is not None:
            self.reference.to(self.engine.device)

    def _logprobs(self, model, mb: MicroBatch, temperature: float | None = None):
        """Logprobs and entropies [B, T] of the tokens each kept position predicts."""
        out = model(input_ids=mb.input_ids_B_S, attention_mask=mb.attention_B_S,
                    logits_to_keep=mb.input_ids_B_S.shape[1] - mb.first)
        logits = out.logits[:, :-1].float() / (temperature or self.temperature)
        return token_logprobs_and_entropy(logits, mb.input_ids_B_S[:, mb.first + 1:])

    def _reference_logprobs(self, mb: MicroBatch) -> torch.Tensor:
        """Logprobs [B, T] under the frozen reference: the base model itself under LoRA."""
        if self.lora:
            with self.engine.module.disable_adapter():
                return self._logprobs(self.engine, mb)[0]
        return self._logprobs(self.reference, mb)[0]

    def train_step(self, batch: PolicyBatch, counts: StepCounts) -> PolicyStepStats:
        """Forward/backward every micro-batch, then one optimizer step. Returns summed statistics."""
        algo = self.algorithm
        stats = PolicyStepStats()
        self._set_lr(self.rl_lr)
        self.engine.train()
        for mb in self._micro_batches(batch):
            rollout_B_T = mb.align(batch.rollout_logprobs_B_T)
            advantages = (mb.select(batch.advantages_B) if batch.advantages_B is not None
                          else mb.align(batch.advantages_B_T))
            logprobs_B_T, entropy_B_T = self._logprobs(self.engine, mb)
            old_B_T = (mb.align(batch.old_logprobs_B_T) if batch.old_logprobs_B_T is not None
                       else logprobs_B_T.detach())
            ref_B_T = None
            if algo.reference_in_loss:
                with torch.no_grad():
                    ref_B_T = self._reference_logprobs(mb)
            per_token, clipped, weight_B_T = algo.corrected_loss(logprobs_B_T, old_B_T, rollout_B_T, advantages,
                                                                 mb.mask_B_T, ref_B_T, batch.reference_point)
            if algo.kl_in_loss:
                kl_B_T = k3_kl(logprobs_B_T, ref_B_T)
                per_token = per_token + algo.config.kl_beta * kl_B_T
                stats.kl_sum += float((kl_B_T.detach() * mb.mask_B_T).sum())
            loss = algo.reduce(per_token, mb.mask_B_T, counts.num_sequences, counts.num_tokens)
            self._backward(loss)
            with torch.no_grad():
                stats.loss += float(loss)
                stats.clipped_tokens += float((clipped & mb.mask_B_T).sum())
                stats.entropy_sum += float((entropy_B_T * mb.mask_B_T).sum())
                stats.tokens += float(mb.mask_B_T.sum())
                gap_B_T = (old_B_T - rollout_B_T).abs() * mb.mask_B_T
                stats.mismatch_sum += float(gap_B_T.sum())
                stats.mismatch_max = max(stats.mismatch_max, float(gap_B_T.max()))
                if algo.config.tis_cap is not None:
                    stats.tis_capped += float(((weight_B_T >= algo.config.tis_cap) & mb.mask_B_T).sum())
                if mb.mask_B_T.any():
                    kept = weight_B_T[mb.mask_B_T]
                    stats.is_weight_sum += float(kept.sum())
                    stats.is_weight_min = min(stats.is_weight_min, float(kept.min()))
                    stats.is_weight_max = max(stats.is_weight_max, float(kept.max()))
        grad_norm = self.engine.get_global_grad_norm()
        stats.grad_norm = float(grad_norm) if grad_norm is not None else 0.0
        return stats

    @torch.no_grad()
    def logprobs(self, batch: TokenBatch, model: str = "policy") -> list[list[float]]:
        """The logprob of every completion token under the current policy (PPO's old logprobs,
        before its epochs move the weights) or the frozen reference (its KL-in-reward)."""
        self.engine.eval()
        out = []
        for mb in self._micro_batches(batch):
            logprobs_B_T = self._logprobs(self.engine, mb)[0] if model == "policy" else self._reference_logprobs(mb)
            out += mb.unalign(logprobs_B_T)
        return out

    def sft_step(self, batch: TokenBatch, counts: StepCounts, lr: float) -> dict[str, float]:
        """One supervised step (the warm start): the mean negative log-likelihood of the masked
        tokens over the whole batch, at temperature 1. Returns summed loss and token count."""
        self._set_lr(lr)
        self.engine.train()
        stats = {"loss": 0.0, "tokens": 0.0}
        for mb in self._micro_batches(batch):
            logprobs_B_T, _ = self._logprobs(self.engine, mb, temperature=1.0)
            loss = aggregate(-logprobs_B_T, mb.mask_B_T, "token_mean", counts.num_sequences, counts.num_tokens)
            self._backward(loss)
            stats["loss"] += float(loss)
            stats["tokens"] += float(mb.mask_B_T.sum())
        return stats

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere). Every rank must call it: under
        ZeRO-3 the parameters are gathered collectively."""
        import deepspeed

        module = self.engine.module

        def copy() -> dict[str, torch.Tensor]:
            # The copies matter: gathered ZeRO-3 tensors are freed on leaving the context, and a ZeRO-1/2
            # parameter is a view into one flat buffer, which pickling would send whole for every tensor.
            if self.lora:
                return merged_state_dict(module)
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = copy()
            return state if self.rank == 0 else None
        return copy() if self.rank == 0 else None

    def open_weight_transfer(self, workers: list) -> None:
        """vLLM's NCCL weight transfer to each rollout worker (GPU only); every rank calls it."""
        import ray

        from trainer.actors.deepspeed_rank import free_port
        from trainer.actors.weight_transfer import open_senders

        ports = [free_port() for _ in workers]
        self.senders = open_senders(self.engine.module, self.zero_stage, self.rank, workers,
                                    ray.util.get_node_ip_address(), ports)

    def send_weights(self, version: int) -> None:
        """Broadcast the policy into every engine (rank 0 sends; under ZeRO-3 all ranks gather)."""
        from trainer.actors.weight_transfer import send

        send(self.senders, version)

    def export(self, directory: str) -> str | None:
        """Write the policy in Hugging Face format (rank 0); every rank must call it."""
        state = self.full_state_dict()
        if self.rank != 0:
            return None
        out = Path(directory)
        if self.lora:  # the merged model, and the adapters alone beside it
            tied = tied_copies(self.engine.module)
            self.engine.module.get_base_model().save_pretrained(
                out, state_dict={k: v for k, v in state.items() if k not in tied})
            self.engine.module.save_pretrained(out / "adapter")
        else:
            self.engine.module.save_pretrained(out, state_dict=state)
        self.tokenizer.save_pretrained(out)
        return str(out)
