"""`flywheel models import-gguf` refuses what it cannot convert, naming the file and the reason.
The conversion itself runs on the real SmolLM2 checkpoint (`real_model`, tests/integration)."""

import subprocess
import sys

import pytest

from trainer.gguf import GGUFImportError, import_gguf


def test_a_file_that_is_not_gguf_is_refused_before_anything_loads(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 a zip, not a checkpoint")
    with pytest.raises(GGUFImportError, match="not a GGUF file"):
        import_gguf(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_file_and_a_bad_dtype_are_named(tmp_path):
    with pytest.raises(GGUFImportError, match="no such file"):
        import_gguf(tmp_path / "absent.gguf", tmp_path / "out")
    with pytest.raises(GGUFImportError, match="dtype: expected one of float32, bfloat16"):
        import_gguf(tmp_path / "absent.gguf", tmp_path / "out", dtype="int8")


def test_the_cli_exits_2_with_the_reason(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_text("hello")
    done = subprocess.run([sys.executable, "-m", "service.cli", "models", "import-gguf", str(bogus),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "not a GGUF file" in done.stderr
