"""The contract's promises: TRL functions unchanged, entry points, import paths, async, None,
and failures recorded rather than scored."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewards import available, load, resolve, score
from rewards.registry import UnknownRewardError
from tests.fixtures import trl_rewards

PROMPTS = ["a", "b", "c", "d"]
COMPLETIONS = ["12 3", "abc", "4", "x1"]
IDS = [[1, 2, 3], [4], [5], [6, 7]]


def run(*modules, columns=None):
    return score(list(modules), PROMPTS, COMPLETIONS, IDS, columns or {})


def test_trl_reward_by_import_path_works_unchanged():
    module = load(import_path="tests.fixtures.trl_rewards:digit_share", weight=2.0)
    assert module.fn is trl_rewards.digit_share
    result = run(module)
    assert result.components["tests.fixtures.trl_rewards:digit_share"] == [1.0, 0.0, 1.0, 0.5]
    assert result.total == [2.0, 0.0, 2.0, 1.0] and not any(result.failed)


def test_dataset_columns_arrive_as_keyword_lists():
    module = load(import_path="tests.fixtures.trl_rewards:answer_length", label="len")
    result = run(module, columns={"answer": ["1234", "xy", "z", "no"]})
    assert result.components["len"] == [1.0, 0.0, 1.0, 1.0]


def test_import_path_to_a_file(tmp_path):
    (tmp_path / "team_score.py").write_text("def score(completions, **kw):\n    return [7.0 for _ in completions]\n")
    module = load(import_path=f"{tmp_path / 'team_score.py'}:score", label="file")
    assert run(module).total == [7.0] * 4


def test_bad_import_paths_are_clear():
    with pytest.raises(UnknownRewardError, match="cannot import 'no_such_pkg.mod'"):
        resolve(import_path="no_such_pkg.mod:fn")
    with pytest.raises(UnknownRewardError, match="has no callable 'nope'"):
        resolve(import_path="tests.fixtures.trl_rewards:nope")


def test_async_module_is_awaited():
    module = load(import_path="tests.fixtures.trl_rewards:async_first_char_digit", label="async")
    assert module.is_async
    assert run(module).components["async"] == [1.0, 0.0, 1.0, 0.0]


def test_none_is_left_out_of_the_weighted_sum():
    some = load(import_path="tests.fixtures.trl_rewards:no_opinion_on_odd", label="some", weight=3.0)
    share = load(import_path="tests.fixtures.trl_rewards:digit_share", label="share")
    result = run(some, share)
    assert result.components["some"] == [1.0, None, 1.0, None]
    assert result.total == [4.0, 0.0, 4.0, 0.5]
    assert not any(result.failed)


def test_raising_module_marks_its_samples_failed_with_the_traceback():
    bad = load(import_path="tests.fixtures.trl_rewards:always_raises", label="bad")
    good = load(import_path="tests.fixtures.trl_rewards:digit_share", label="good")
    result = run(bad, good)
    assert result.failed == [True] * 4
    assert result.failure_counts() == {"bad": 4, "good": 0}
    assert "RuntimeError: grader backend unavailable" in result.failures[0].error
    assert result.components["good"] == [1.0, 0.0, 1.0, 0.5]  # the other module still scored


def test_hanging_module_times_out_and_is_recorded():
    hang = load(import_path="tests.fixtures.trl_rewards:hangs", label="hang", timeout_s=0.3)
    start = time.perf_counter()
    result = run(hang)
    assert time.perf_counter() - start < 5
    assert result.failed == [True] * 4 and "timed out after 0.3 s" in result.failures[0].error


def test_an_exponential_regex_is_stopped_and_recorded_as_failed():
    # (a|aa)+$ backtracks exponentially on a run of a's that ends in something else.
    completions = ["a" * 40 + "!"] * 4
    for match_s, module_s, error in ((0.3, 5.0, "TimeoutError"), (30.0, 0.5, "timed out after 0.5 s")):
        module = load("regex", config={"pattern": "(a|aa)+$", "match_timeout_s": match_s}, timeout_s=module_s)
        start = time.perf_counter()
        result = score([module], PROMPTS, completions, IDS, {})
        assert time.perf_counter() - start < 3, match_s  # the engine lets go of the GIL: the limit fires
        assert result.failed == [True] * 4 and error in result.failures[0].error, result.failures[0].error


def test_wrong_length_and_nan_are_failures_not_scores(tmp_path):
    (tmp_path / "odd.py").write_text(
        "def short(completions, **kw):\n    return [1.0]\n"
        "def nan(completions, **kw):\n    return [float('nan'), 1.0, 'x', 2]\n")
    short = load(import_path=f"{tmp_path / 'odd.py'}:short", label="short")
    assert "returned 1 values for 4 completions" in run(short).failures[0].error
    nan = load(import_path=f"{tmp_path / 'odd.py'}:nan", label="nan")
    result = run(nan)
    assert result.failed == [True, False, True, False] and result.total == [0.0, 1.0, 0.0, 2.0]


def test_entry_point_module_is_discovered(tmp_path, monkeypatch):
    (tmp_path / "team_rewards_pkg.py").write_text(
        "def polite(prompts, completions, **kw):\n    return [float('please' in c) for c in completions]\n")
    info = tmp_path / "team_rewards_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-rewards-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[flywheel.rewards]\npolite = team_rewards_pkg:polite\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available()["polite"]["source"] == "entry point team_rewards_pkg:polite"
    module = load("polite")
    assert score([module], ["q"], ["yes please"], [[1]], {}).total == [1.0]


class _Grader(BaseHTTPRequestHandler):
    calls: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Grader.calls.append(body)
        if len(_Grader.calls) == 1:  # the first attempt fails: the client must retry
            self.send_response(503)
            self.end_headers()
            return
        out = json.dumps({"rewards": [len(c) for c in body["completions"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def grader():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Grader)
    _Grader.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/score"
    server.shutdown()


def test_http_reward_posts_the_batch_and_retries_a_5xx(grader):
    module = load("http", config={"url": grader, "retries": 2})
    result = run(module, columns={"answer": ["1", "2", "3", "4"]})
    assert result.total == [4.0, 3.0, 1.0, 2.0]
    assert len(_Grader.calls) == 2
    assert _Grader.calls[1]["columns"]["answer"] == ["1", "2", "3", "4"]


def test_http_reward_unreachable_is_a_recorded_failure():
    module = load("http", config={"url": "http://127.0.0.1:9/score", "retries": 0, "timeout_s": 1})
    result = run(module)
    assert result.failed == [True] * 4 and "ConnectError" in result.failures[0].error
