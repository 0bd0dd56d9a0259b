"""The algorithms: pure torch, no Ray, DeepSpeed or I/O (docs/architecture.md, "Algorithms").

`advantages.py`, `losses.py` and `ppo.py` hold the formulas as tested functions; each algorithm
is one object (`base.Algorithm`) in its own module, and `ALGORITHMS` below names them all. The
loop and the learner ask the object — its advantages, its loss, whether it needs a critic or a
reference, whether it refills groups or filters truncated samples — and never test `type`.

Adding an algorithm touches three places: its module here, its spec variant in
`trainer/spec/algorithms.py` (and the `AlgorithmSpec` union there), and the `ALGORITHMS` dict.
"""

from __future__ import annotations

from trainer.algorithms.base import Algorithm
from trainer.algorithms.dapo import DAPO
from trainer.algorithms.grpo import GRPO, DrGRPO
from trainer.algorithms.gspo import GSPO
from trainer.algorithms.offline import KTO, FilteredSFT, OfflinePG
from trainer.algorithms.ppo import PPO
from trainer.algorithms.reinforce_pp import ReinforcePP
from trainer.algorithms.rloo import RLOO

ALGORITHMS: dict[str, type[Algorithm]] = {
    "grpo": GRPO,
    "dr_grpo": DrGRPO,
    "rloo": RLOO,
    "reinforce_pp": ReinforcePP,
    "dapo": DAPO,
    "gspo": GSPO,
    "ppo": PPO,
    "offline_pg": OfflinePG,
    "kto": KTO,
    "filtered_sft": FilteredSFT,
}


def build_algorithm(config, max_new_tokens: int) -> Algorithm:
    """The algorithm object for a spec's `algorithm` section; `max_new_tokens` is the rollout's
    token budget (Dr. GRPO's default loss normaliser)."""
    if config.type not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {config.type!r}; valid: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[config.type](config, max_new_tokens)


__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm"]
