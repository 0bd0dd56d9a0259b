"""Step 6 from the driver: the learner's weights to every rollout worker: through the Ray
object store (the default), or broadcast over NCCL by vLLM's weight transfer on GPUs
(`rollout.vllm.weight_transfer = "nccl"`)."""

from __future__ import annotations

from trainer.actors.cluster import JobActors, get_all


def sync_weights(actors: JobActors, version: int) -> None:
    """Learner → rollout workers through the Ray object store (rank 0 holds the full weights).

    Nothing waits here: an actor runs its calls in submission order, so each worker loads the new
    weights before its next rollout (inside `time/rollout`), and checks it holds `version` then.
    """
    if actors.weight_transfer == "nccl":  # every rank takes part (ZeRO-3 gathers); the broadcast blocks
        get_all([lr.send_weights.remote(version) for lr in actors.learners])
        actors.weights_version = version
        return
    # Under ZeRO-3 every rank takes part in gathering the weights; otherwise rank 0 has them all.
    learners = actors.learners if actors.zero_stage == 3 else actors.learners[:1]
    state_ref = [lr.full_state_dict.remote() for lr in learners][0]
    for worker in actors.workers:
        worker.update_weights.remote(state_ref, version)
    actors.weights_version = version
