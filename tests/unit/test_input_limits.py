"""Where a team or a caller controls the size of what is read, the size is capped and the cap is
named: a dataset or demonstrations file over its limit is refused before it is read, the checks
read a dataset as a stream, and the `http` reward reads at most its cap of a response, decoded."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from environments import EnvironmentConfigError, build
from rewards import load, score
from tests.conftest import DIGITS, ROOT
from trainer.checks.preflight import preflight
from trainer.spec import SpecError, parse_spec


def sparse(path, size: int):
    """A file of `size` bytes that takes no disk."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_a_dataset_over_its_limit_is_refused_before_it_is_read(tmp_path):
    huge = sparse(tmp_path / "huge.jsonl", (1024 << 20) + 1)
    with pytest.raises(EnvironmentConfigError) as err:
        build("dataset", {"train": str(huge)})
    assert err.value.field == "train" and "over the dataset limit of 1,024 MiB (`max_file_mb`" in str(err.value)
    with pytest.raises(EnvironmentConfigError, match="limit of 1 MiB"):
        build("dataset", {"train": str(DIGITS), "eval": str(sparse(tmp_path / "e.parquet", 2 << 20)), "max_file_mb": 1})


def test_demonstrations_over_their_limit_are_refused_naming_the_field(tmp_path):
    demos = sparse(tmp_path / "demos.jsonl", 2 << 20)
    spec = parse_spec({"model": {"path": "org/model"}, "environment": {"config": {"train": str(DIGITS)}},
                       "rewards": [{"name": "json_valid"}], "warm_start": {"data": str(demos), "max_file_mb": 1}})
    with pytest.raises(SpecError) as err:
        preflight(spec)
    assert err.value.errors == [{"field": "warm_start.data", "message": f"{demos} is 2.0 MiB, over the "
                                 "demonstrations limit of 1 MiB (warm_start.max_file_mb): raise it where the "
                                 "trainer's machines hold them in memory, or use a smaller file"}]


@pytest.mark.parametrize("config, field", [
    ({"environment": {"config": {"train": "data/a\x00.jsonl"}}}, "environment.config.train"),
    ({"environment": {"config": {"eval": {"config": {"train": "\x00"}}}}}, "environment.config.eval.config.train"),
    ({"rewards": [{"name": "outcome_model", "config": {"path": "m\x00"}}]}, "rewards.0.config.path"),
    ({"model": {"path": "models/" + "x" * 256}}, "model.path"),
])
def test_an_unusable_path_is_refused_by_the_spec_naming_the_field(config, field):
    data = {"model": {"path": "org/model"}, "rewards": [{"name": "json_valid"}], **config}
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert [e["field"] for e in err.value.errors] == [field]


CHECK_MEMORY = """
import sys, tracemalloc
import trainer.checks.preflight  # torch, transformers: imported before the count starts
from trainer.checks.__main__ import main
tracemalloc.start()
main(sys.argv[1])
print(tracemalloc.get_traced_memory()[1] >> 20)
"""


def test_the_checks_read_a_large_dataset_as_a_stream(tmp_path):
    """64 MiB of rows, each one checked: the check's Python objects peak at a few MiB (reading the
    whole file took them to 140 MiB)."""
    row = json.dumps({"prompt": "q" * 2000, "answer": "4"}).encode() + b"\n"
    data = tmp_path / "large.jsonl"
    data.write_bytes(row * (64 * 2**20 // len(row)) + b'{"answer": "no prompt"}\n')
    spec = {"model": {"path": "org/model"}, "environment": {"config": {"train": str(data)}},
            "rewards": [{"name": "json_valid"}]}
    (tmp_path / "request.json").write_text(json.dumps({"kind": "preflight", "spec": spec}))
    done = subprocess.run([sys.executable, "-c", CHECK_MEMORY, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["spec_errors"][0]["field"] == "environment.config.prompt_column"  # the last row was read
    assert int(done.stdout.split()[-1]) < 32


HOG = """
import numpy
RESERVED = numpy.empty(3 << 30, dtype=numpy.uint8)  # address space only: nothing is touched

def score(prompts, completions, **columns):
    return [0.0 for _ in completions]
"""


def test_a_check_over_its_memory_limit_names_the_field(tmp_path):
    (tmp_path / "hog.py").write_text(HOG)
    spec = {"model": {"path": "org/model"}, "environment": {"config": {"train": str(DIGITS)}},
            "rewards": [{"import_path": f"{tmp_path / 'hog.py'}:score"}]}
    (tmp_path / "request.json").write_text(json.dumps({"kind": "preflight", "spec": spec}))
    done = subprocess.run([sys.executable, "-m", "trainer.checks", str(tmp_path), "--memory-mb", "2048"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    error = json.loads((tmp_path / "result.json").read_text())["error"]
    assert error == {"status": 422, "code": "check_memory_limit", "field": "rewards.0.import_path",
                     "message": f"rewards.0.import_path: loading reward module '{tmp_path / 'hog.py'}:score' went "
                                "over the checks' memory limit of 2,048 MiB; use smaller data or a smaller model, "
                                "or ask the operators for a higher limit"}


class _Answers(BaseHTTPRequestHandler):
    """A scoring endpoint whose answers are too large: a stream of 64 MiB with no length, or 64
    MiB of JSON as 64 KiB of gzip."""

    sent = 0
    BOMB = b""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path == "/gzip":
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(self.BOMB)))
            self.end_headers()
            self.wfile.write(self.BOMB)
            return
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        self.wfile.write(b'{"rewards": [1, 1, 1, 1], "padding": "')
        block = b"x" * (64 << 10)
        try:
            for _ in range(1024):
                self.wfile.write(block)
                _Answers.sent += len(block)
            self.wfile.write(b'"}')
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def answers():
    deflate = zlib.compressobj(wbits=31)  # gzip
    chunks = [deflate.compress(b'{"rewards": [1, 1, 1, 1], "padding": "')]
    chunks += [deflate.compress(b"0" * (1 << 20)) for _ in range(64)]
    _Answers.BOMB = b"".join([*chunks, deflate.compress(b'"}'), deflate.flush()])
    _Answers.sent = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("path", ["/stream", "/gzip"])
def test_the_http_reward_caps_the_answer_it_reads_decoded(answers, path):
    module = load("http", config={"url": answers + path, "retries": 0, "max_response_bytes": 1 << 20})
    result = score([module], ["q"] * 4, ["a"] * 4, [[]] * 4, {})
    assert result.failed == [True] * 4
    assert result.failures[0].error.strip().splitlines()[-1].endswith(
        "answered more than 1,048,576 bytes (decoded), the http reward's limit (config.max_response_bytes): "
        "raise it, or answer with less")
    assert path == "/gzip" or _Answers.sent < 32 << 20  # it stopped reading: the rest was never sent
