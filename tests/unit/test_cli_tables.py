"""The CLI's tables print whole names and numbers, piped or at 80 columns."""

from service.cli import print_dry_run

REPORT = {
    "tasks": 8, "group_size": 8, "samples": 64, "rollout_s": 12.3, "response_tokens_mean": 30.2, "failed_samples": 0,
    "reward": {"count": 64, "mean": 0.371, "std": 0.52, "min": -1.04, "p10": -0.03, "p50": 0.96, "p90": 0.97,
               "max": 0.98},
    "components": {
        "format_reward": {"count": 64, "none": 0, "mean": 0.5, "std": 0.5, "min": 0, "p10": 0, "p50": 0.5, "p90": 1,
                          "max": 1},
        "content_similarity": {"count": 64, "none": 3, "mean": 0.123, "std": 0.00123, "min": -0.000123, "p10": 0.1,
                               "p50": 0.12, "p90": 0.2, "max": 0.99}},
    "groups": {"count": 8, "all_equal": 2, "all_equal_share": 0.25}, "warnings": [],
}


def test_dry_run_table_keeps_whole_names_when_piped(capsys):
    print_dry_run(REPORT)
    out = capsys.readouterr().out
    assert "format_reward" in out and "content_similarity" in out and "-0.000123" in out
    assert "…" not in out
    row = next(line for line in out.splitlines() if "content_similarity" in line)
    assert row.split() == ["content_similarity", "64", "3", "0.123", "0.00123", "-0.000123", "0.1", "0.12", "0.2",
                           "0.99"]
