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

