"""Builds that die: SIGKILL at each stage leaves nothing loadable at --out and no staging
debris that grows with retries; a second build into the same --out while one runs is refused;
a full disk is a clear error with nothing written (optimizer/core/out_lock.py,
optimizer/core/artifact.py's staging_dir)."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.core.artifact import load_engine
from optimizer.core.errors import EngineError
from optimizer.core.out_lock import lock_path, output_lock

BUILD = ["model", "--random-weights", "--config", "tiny-llama", "--quant", "int4", "--method", "rtn", "-q"]
ROOT = Path(__file__).resolve().parent.parent


def debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*") if p != lock_path(out))


def build_killed_at(stage: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.kill_at", stage, *BUILD, "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_sigkill_at_each_stage_leaves_nothing_loadable_and_no_growing_debris(tmp_path):
    out = tmp_path / "engine"
    for stage in ("load", "quantize", "capture", "write", "verify", "checksum", "write"):
        proc = build_killed_at(stage, out)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert not out.exists()
        with pytest.raises(EngineError):
            load_engine(out)
        assert len(debris(out)) <= 1, debris(out)  # the last run's staging directory at most: retries clear it
    code = CliRunner().invoke(main, [*BUILD, "--out", str(out)])
    assert code.exit_code == 0, code.output
    load_engine(out)  # complete, every checksum right
    assert debris(out) == [] and not lock_path(out).exists()


def test_sigkill_while_replacing_an_engine_keeps_the_previous_one(tmp_path):
    out = tmp_path / "engine"
    assert CliRunner().invoke(main, [*BUILD, "--out", str(out)]).exit_code == 0
    before = load_engine(out).manifest["files"]
    proc = build_killed_at("rename", out, "--overwrite", "--seed", "1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists() and len(debris(out)) == 2  # the old engine set aside, the new one staged
    result = CliRunner().invoke(main, ["model", "--random-weights", "--config", "tiny-llama", "--out", str(out)])
    assert result.exit_code != 0 and "restored the previous engine" in result.output
    assert "already exists" in result.output  # the restored engine is not overwritten without --overwrite
    assert load_engine(out).manifest["files"] == before and debris(out) == []


def test_a_second_build_into_the_same_output_is_refused(tmp_path):
    out = tmp_path / "engine"
    with output_lock(out):
        result = CliRunner().invoke(main, [*BUILD, "--out", str(out)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"another build is writing {out}" in result.output, result.output
        assert not out.exists()
    assert not lock_path(out).exists()


def test_the_lock_of_a_killed_build_does_not_block_the_next(tmp_path):
    out = tmp_path / "engine"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from optimizer.core.out_lock import output_lock\n"
                               f"with output_lock(Path({str(out)!r})):\n print('held', flush=True); time.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="another build is writing"):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists()  # left by the killed holder, and no longer locked:
    with output_lock(out):
        pass
    assert not lock_path(out).exists()


def partial_then_enospc(model, path, external_data=None):
    Path(path).write_bytes(b"\0" * 4096)  # the disk filled partway through the file
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_while_writing_is_a_clear_error_with_nothing_written(tmp_path, monkeypatch):
    """ENOSPC injected at the write call (mounting a small tmpfs needs root); by hand, an --out on
    a 2 MB tmpfs gives the same message."""
    import optimizer.engine_files as engine_files

    monkeypatch.setattr(engine_files.ir, "save", partial_then_enospc)
    out = tmp_path / "engine"
    result = CliRunner().invoke(main, [*BUILD, "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: no space left on the device while writing the engine" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    import optimizer.engine_files as engine_files

    monkeypatch.setattr(engine_files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    result = CliRunner().invoke(main, [*BUILD, "--out", str(tmp_path / "engine")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "the engine's weights need" in result.output and "MB free" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_the_tokenizer_is_written(tmp_path, monkeypatch, smol_tokenizer_dir):
    """The Rust tokenizer reports ENOSPC as a plain Exception ("... (os error 28)"), as a 3.8 MB
    tmpfs showed: still the same clear error."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    def full(self, directory, *args, **kwargs):
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    result = CliRunner().invoke(main, [*BUILD, "--tokenizer", str(smol_tokenizer_dir), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: no space left on the device while writing the engine" in result.output, result.output
    assert list(tmp_path.iterdir()) == []
