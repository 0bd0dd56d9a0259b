"""A job's result as the trainer reports it and the service stores it: the held-out evaluation
by phase, `{"before": {"step", "metrics"}, "after": {...}}`; and its side-by-side table, which
`python -m trainer.run` and the `flywheel` CLI both print."""

from __future__ import annotations


def result_table(result: dict):
    """The held-out evaluation by phase ({phase: {step, metrics}}) as a rich table, with the change."""
    from rich.table import Table

    phases = [p for p in ("before", "after") if p in result]
    table = Table("held-out evaluation", *(f"{p} (step {result[p]['step']})" for p in phases),
                  *(["change"] if len(phases) == 2 else []))
    names = [k for k in result[phases[0]]["metrics"] if k.startswith("eval/")]
    for name in names:
        values = [result[p]["metrics"].get(name) for p in phases]
        rate = name.endswith("_rate")
        cells = [("" if v is None else f"{v:.1%}" if rate else f"{v:.3g}") for v in values]
        if len(values) == 2 and None not in values:
            diff = values[1] - values[0]
            cells.append(f"{diff * 100:+.1f} pts" if rate else f"{diff:+.3g}")
        table.add_row(name.removeprefix("eval/"), *cells)
    return table
