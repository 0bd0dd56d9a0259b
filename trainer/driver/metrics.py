"""Step 7's numbers: one flat dict per training step, for wandb and the control plane."""

from __future__ import annotations

import statistics

import torch

from rewards import ScoreResult
from trainer.types import Sample


def reward_gaps(components: dict[str, list[float | None]], compare: dict[str, str]) -> dict[str, float]:
    """For each module that names another as its truth (`rewards[].compare_to`): its mean minus
    the truth's over the samples both scored (`reward_gap/<label>`), and the mean absolute gap."""
    out = {}
    for name, truth in compare.items():
        pairs = [(p, t) for p, t in zip(components[name], components[truth], strict=True)
                 if p is not None and t is not None]
        if pairs:
            out[f"reward_gap/{name}"] = statistics.fmean(p - t for p, t in pairs)
            out[f"reward_gap/{name}_abs"] = statistics.fmean(abs(p - t) for p, t in pairs)
    return out


def step_metrics(samples: list[Sample], scores: ScoreResult, advantages_P_G: torch.Tensor,
                 learn_stats: dict[str, float], seconds: dict[str, float],
                 compare: dict[str, str] | None = None) -> dict[str, float]:
    ok = [r for r, f in zip(scores.total, scores.failed, strict=True) if not f]
    lengths = [len(s.completion.token_ids) for s in samples]
    rewards_P_G = torch.tensor(scores.total).view(advantages_P_G.shape)
    m: dict[str, float] = {
        "reward/mean": statistics.fmean(ok) if ok else 0.0,
        "reward/std": statistics.pstdev(ok) if len(ok) > 1 else 0.0,
        "reward/failed": float(len({i for f in scores.failures for i in f.indices})),
        "advantage/mean": float(advantages_P_G.mean()),
        "advantage/abs_mean": float(advantages_P_G.abs().mean()),
        "groups/all_equal_frac": float((rewards_P_G.max(dim=1).values == rewards_P_G.min(dim=1).values)
                                       .float().mean()),
        "response/length_mean": statistics.fmean(lengths),
        "response/truncated_frac": statistics.fmean(s.completion.truncated for s in samples),
        **learn_stats,
    }
    for name, values in scores.components.items():
        vals = [v for v in values if v is not None]
        m[f"reward/{name}"] = statistics.fmean(vals) if vals else 0.0
    m.update(reward_gaps(scores.components, compare or {}))
    for name, count in scores.failure_counts().items():
        m[f"reward_failures/{name}"] = float(count)
    m.update({f"time/{k}": v for k, v in seconds.items()})
    m["time/step"] = sum(seconds.values())
    m["perf/tokens_per_s"] = sum(lengths) / max(m["time/step"], 1e-9)
    return m
