"""Progress output: live bars on a terminal, and elsewhere plain or JSON lines with a
heartbeat while a step runs (so a log shows a long step is still moving)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from optimizer.core import progress


@pytest.fixture
def log_format():
    before = progress._format
    yield progress.set_log_format
    progress.set_log_format(before)


def _slow_step(interval: float) -> None:
    with progress.step("quantize", interval=interval):
        with progress.bar("layers", 4) as advance:
            for _ in range(4):
                time.sleep(0.06)
                advance()


def test_plain_logs_report_a_running_step_with_its_count_rate_and_eta(log_format, capsys):
    log_format("plain")
    _slow_step(0.05)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "quantize ..." and lines[-1].startswith("  done in ")
    beats = [line for line in lines if line.startswith("  layers: ")]
    assert beats and all("/4, " in b and "/s, " in b and "ETA" in b for b in beats)
    assert any(b.startswith("  layers: 1/4") or b.startswith("  layers: 2/4") for b in beats)


def test_a_step_without_a_bar_says_it_is_still_running(log_format, capsys):
    log_format("plain")
    with progress.step("load model", interval=0.05):
        time.sleep(0.16)
    assert "  ... load model: 0 s so far" in capsys.readouterr().err


def test_only_the_innermost_running_step_reports(log_format, capsys):
    log_format("plain")
    with progress.step("report", interval=0.05):
        with progress.step("build variant", interval=0.05):
            time.sleep(0.2)
    lines = capsys.readouterr().err.splitlines()
    inner_done = next(i for i, line in enumerate(lines) if line.startswith("  done in "))  # build variant's
    inner_first = next(i for i, line in enumerate(lines) if "... build variant:" in line)
    assert inner_first < inner_done
    # while the inner step runs, the outer stays quiet (on a loaded machine its heartbeat may
    # fire before the inner step starts, or between the inner step's end and its own)
    assert not any("... report:" in line for line in lines[inner_first:inner_done])


def test_json_logs_are_one_event_per_line(log_format, capsys):
    log_format("json")
    _slow_step(0.05)
    progress.console().print("[bold]note[/bold] something")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "step_start" and "step_end" in kinds and "progress" in kinds
    beat = next(e for e in events if e["event"] == "progress")
    assert beat["step"] == "quantize" and beat["item"] == "layers" and beat["total"] == 4
    assert events[-1] == {"time": events[-1]["time"], "event": "message", "text": "note something"}


def test_quiet_prints_nothing(log_format, capsys):
    log_format("plain")
    with progress.step("x", quiet=True):
        with progress.bar("y", 3, quiet=True) as advance:
            advance()
    assert capsys.readouterr().err == ""


def test_a_build_logging_to_a_file_writes_json_events(tmp_path):
    """`optimize --log-format json model ...` with stderr to a file: every line is an event,
    the build's steps among them; an error is one event with its hint."""
    log = tmp_path / "build.log"
    with log.open("w") as f:
        code = subprocess.run([sys.executable, "-m", "optimizer.cli", "--log-format", "json", "model",
                               "--random-weights", "--config", "tiny-llama", "--out", str(tmp_path / "e")],
                              stderr=f, stdout=subprocess.DEVNULL).returncode
    assert code == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "step_start"]
    assert steps[0] == "load model" and any(s.startswith("verify") for s in steps)
    failed = subprocess.run([sys.executable, "-m", "optimizer.cli", "--log-format", "json", "inspect",
                             str(tmp_path / "missing")], capture_output=True, text=True)
    error = json.loads(failed.stderr.strip().splitlines()[-1])
    assert failed.returncode != 0 and error["event"] == "error" and "does not exist" in error["message"]
    assert error["hint"]
