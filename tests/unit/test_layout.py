"""What the import contracts cannot see: the loop and the actors ask the algorithm object and never
test its name."""

import re

from tests.conftest import ROOT
from trainer.spec import ALGORITHM_TAGS

KNOWS_ALGORITHMS = ("trainer/algorithms/", "trainer/spec/")


def test_only_the_algorithms_and_the_spec_name_an_algorithm():
    quoted = re.compile("[\"'](" + "|".join(sorted(ALGORITHM_TAGS)) + ")[\"']")
    offenders = []
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(KNOWS_ALGORITHMS):
            continue
        text = path.read_text()
        offenders += [f"{rel}: {m.group(0)}" for m in quoted.finditer(text)]
        offenders += [f"{rel}: tests .type" for _ in re.finditer(r"algorithm\.type\b", text)]
    assert not offenders, offenders



def test_a_new_algorithm_is_its_object_its_spec_variant_and_one_registry_line(monkeypatch):
    """A toy algorithm (the sign of the group-centred reward) reaches the driver's advantage step
    through nothing but its object and its entry in ALGORITHMS."""
    from typing import Literal

    import torch

    from environments import Task
    from rewards import ScoreResult
    from trainer.algorithms import ALGORITHMS, Algorithm, build_algorithm
    from trainer.driver.learn import compute_advantages
    from trainer.spec.algorithms import GRPOSpec
    from trainer.types import Completion, Sample

    class SignSpec(GRPOSpec):  # its spec variant (a real one also joins the AlgorithmSpec union)
        type: Literal["sign"] = "sign"

    class Sign(Algorithm):  # its module
        def advantages(self, rewards_P_G, valid_P_G):
            return torch.sign(rewards_P_G - rewards_P_G.mean(dim=1, keepdim=True)) * valid_P_G

    monkeypatch.setitem(ALGORITHMS, "sign", Sign)  # its registry line
    algorithm = build_algorithm(SignSpec(), max_new_tokens=4)
    task = Task("t", [{"role": "user", "content": "q"}])
    samples = [Sample(task, 0, [1], Completion([5], [0.0], "a", False), 0) for _ in range(4)]
    scores = ScoreResult([3.0, 1.0, 0.5, 0.5], {"r": [3.0, 1.0, 0.5, 0.5]}, [False, False, False, True])
    advantages_P_G = compute_advantages(samples, scores, algorithm, group_size=2, max_new_tokens=4)
    assert advantages_P_G.tolist() == [[1.0, -1.0], [0.0, 0.0]]


def test_every_top_level_package_is_in_the_readme_layout_table():
    """The README's layout table names every top-level folder that holds code or project files."""
    rows = set(re.findall(r"^\| `([\w.-]+)/` \|", (ROOT / "README.md").read_text(), re.M))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
               and p.name not in ("runs", "wandb", "build", "dist") and not p.name.endswith(".egg-info")
               and any(p.iterdir())}
    assert packages <= folders
    assert not folders - rows, f"top-level folders missing from the README's layout table: {sorted(folders - rows)}"
    assert not rows - folders, f"the README's layout table names folders that do not exist: {sorted(rows - folders)}"


def test_the_loop_asks_one_question_of_the_algorithm():
    """How a job learns is chosen in one place (`trainer/learning.py::way_of_learning`): the loop
    and the harness never branch on what the algorithm needs."""
    asked = re.compile(r"algorithm\.(offline|needs_critic|fits_classifier)\b")
    for rel in ("trainer/loop.py", "trainer/driver/harness.py", "trainer/outcome_model.py"):
        assert not asked.findall((ROOT / rel).read_text()), rel
    assert len(asked.findall((ROOT / "trainer/learning.py").read_text())) == 2
