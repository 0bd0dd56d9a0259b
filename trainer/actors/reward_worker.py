"""Reward scoring off the learner's critical path: a Ray actor holding the job's reward modules.

The loop hands it each rollout worker's samples as soon as that worker finishes (Ray resolves
the ObjectRef), so scoring overlaps the rest of the rollout.
"""

from __future__ import annotations

from collections import Counter

from rewards import RewardModule, ScoreResult, load
from rewards.scoring import score
from trainer.types import Sample


def load_modules(specs) -> list[RewardModule]:
    """Load the spec's reward modules; repeated labels get a `#2`, `#3` suffix."""
    seen: Counter[str] = Counter()
    modules = []
    for spec in specs:
        seen[spec.label] += 1
        label = spec.label if seen[spec.label] == 1 else f"{spec.label}#{seen[spec.label]}"
        modules.append(load(spec.name, spec.import_path, spec.config, spec.weight, spec.timeout_s, label))
    return modules


def columns_of(samples: list[Sample]) -> dict[str, list]:
    """Every task column and every outcome field as a keyword list (outcome fields win a name
    clash); a column missing from some rows is None there."""
    rows = [{**s.task.columns, **s.outcome} for s in samples]
    names = sorted({k for row in rows for k in row})
    return {k: [row.get(k) for row in rows] for k in names}


def score_samples(modules: list[RewardModule], samples: list[Sample]) -> ScoreResult:
    # TRL's convention: strings for plain-text data, message lists for conversational data.
    prompts = [s.task.prompt_text if s.task.prompt_text is not None else s.task.prompt for s in samples]
    completions = [s.messages if s.messages is not None
                   else s.completion.text if s.task.prompt_text is not None
                   else [{"role": "assistant", "content": s.completion.text}] for s in samples]
    completion_ids = [s.completion.token_ids for s in samples]
    return score(modules, prompts, completions, completion_ids, columns_of(samples))


class RewardWorker:
    """Wrapped with `ray.remote` by the loop."""

    def __init__(self, specs):
        self.modules = load_modules(specs)

    def names(self) -> list[str]:
        return [m.name for m in self.modules]

    def score(self, samples: list[Sample]) -> ScoreResult:
        return score_samples(self.modules, samples)
