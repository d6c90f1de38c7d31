"""Progress and status output on stderr (stdout stays free for results and generated text).

Three formats (`set_log_format`, the CLI's `--log-format`, or OPTIMIZER_LOG_FORMAT):

- `auto` (default): live bars where stderr is a terminal, `plain` lines elsewhere;
- `plain`: a line when a step starts and ends, and while one runs a line at least every
  `LOG_INTERVAL` seconds: its bar's count, rate and ETA, or the time it has taken so far (so a
  CI log or a `nohup` file shows a long AWQ layer is still moving);
- `json`: the same events as one JSON object per line, for machines.

`quiet=True` everywhere silences progress for library use and tests.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

LOG_FORMATS = ("auto", "plain", "json")
LOG_INTERVAL = 10.0  # seconds between progress lines of a running step, in plain and json logs

_console = Console(stderr=True, highlight=False)
_format = os.environ.get("OPTIMIZER_LOG_FORMAT", "auto")


def set_log_format(name: str) -> None:
    if name not in LOG_FORMATS:
        raise ValueError(f"unknown log format {name!r}; choose one of {', '.join(LOG_FORMATS)}")
    global _format
    _format = name


def log_format() -> str:
    """The format in effect: `auto` resolved by whether stderr is a terminal."""
    if _format == "auto":
        return "live" if _console.is_terminal else "plain"
    return _format


class _JsonConsole:
    """Console-like: each print becomes a {"event": "message", "text": ...} line."""

    def print(self, *objects: Any, end: str = "\n", markup: bool = True, **_: Any) -> None:
        text = " ".join(Text.from_markup(o).plain if markup and isinstance(o, str) else str(o) for o in objects)
        if text.strip():
            _emit({"event": "message", "text": text.strip()})


def console() -> Console | _JsonConsole:
    return _JsonConsole() if log_format() == "json" else _console


def error(message: str, hint: str | None) -> None:
    """A user error on stderr: `error: ...` and its hint, or one json event."""
    if log_format() == "json":
        _emit({"event": "error", "message": message, "hint": hint})
        return
    _console.print("[bold red]error:[/bold red] ", end="")
    _console.print(message, markup=False, soft_wrap=True)
    if hint:
        _console.print(f"  hint: {hint}", markup=False, soft_wrap=True)


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps({"time": round(time.time(), 3), **record}), file=sys.stderr, flush=True)


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- steps and bars ------------------------------------------------------------------------
class _Status:
    """What the running step's heartbeat reports: its title and its bar's count, if any."""

    def __init__(self, title: str) -> None:
        self.title, self.start = title, time.monotonic()
        self.bar: tuple[str, float, float, float] | None = None  # description, done, total, bar start
        self.lock = threading.Lock()

    def report(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.start
        record: dict[str, Any] = {"step": self.title, "elapsed_s": round(elapsed, 1)}
        with self.lock:
            if self.bar is not None:
                description, done, total, started = self.bar
                rate = done / max(time.monotonic() - started, 1e-9)
                record.update(item=description, done=done, total=total, rate_per_s=round(rate, 3),
                              eta_s=round((total - done) / rate, 1) if rate > 0 and total else None)
        return record


_active: list[_Status] = []  # the running steps, innermost last
_active_lock = threading.Lock()  # a heartbeat's check of _active and its line, against steps entering or leaving


def _plain(record: dict[str, Any]) -> str:
    if "done" in record:
        eta = "?" if record["eta_s"] is None else f"{record['eta_s']:.0f} s"
        return (f"  {record['item']}: {record['done']:g}/{record['total']:g}, {record['rate_per_s']:.3g}/s, "
                f"{record['elapsed_s']:.0f} s elapsed, ETA {eta}")
    return f"  ... {record['step']}: {record['elapsed_s']:.0f} s so far"


def _heartbeat(status: _Status, stop: threading.Event, fmt: str, interval: float) -> None:
    while not stop.wait(interval):
        with _active_lock:  # else a step starting inside this one could report before this line
            if _active and _active[-1] is not status:
                continue  # a step inside this one is running: it reports
            record = status.report()
            if fmt == "json":
                _emit({"event": "progress", **record})
            else:
                _line(_plain(record))


@contextmanager
def step(title: str, quiet: bool = False, interval: float | None = None) -> Iterator[None]:
    """Announce a step, then report its wall time when it ends; in plain and json logs, a
    progress line every `interval` (LOG_INTERVAL) seconds while it runs."""
    if quiet:
        yield
        return
    fmt, status = log_format(), _Status(title)
    stop = threading.Event()
    beat = None
    if fmt == "json":
        _emit({"event": "step_start", "step": title})
    elif fmt == "live":
        _console.print(f"[bold]{title}[/bold] ...")
    else:
        _line(f"{title} ...")
    if fmt != "live":
        beat = threading.Thread(target=_heartbeat, args=(status, stop, fmt, interval or LOG_INTERVAL), daemon=True)
        beat.start()
    with _active_lock:
        _active.append(status)
    finished = False
    try:
        yield
        finished = True
    finally:
        stop.set()
        if beat is not None:
            beat.join()
        # its end line and its leaving as one: a step around this one reports only after both
        with _active_lock:
            if finished:
                _step_end(title, fmt, time.monotonic() - status.start)
            _active.remove(status)


def _step_end(title: str, fmt: str, seconds: float) -> None:
    if fmt == "json":
        _emit({"event": "step_end", "step": title, "seconds": round(seconds, 2)})
    elif fmt == "live":
        _console.print(f"  done in {seconds:.1f} s")
    else:
        _line(f"  done in {seconds:.1f} s")


@contextmanager
def bar(description: str, total: float, quiet: bool = False) -> Iterator["Advance"]:
    """A progress bar; the yielded callable advances it by n units. On a terminal a live bar;
    in plain and json logs the running step's heartbeat reports its count, rate and ETA."""
    if quiet:
        yield Advance()
        return
    if log_format() != "live":
        status = _active[-1] if _active else None
        if status is None:  # a bar outside any step: report through a step of its own
            with step(description):
                with bar(description, total) as advance:
                    yield advance
            return
        with status.lock:
            previous, status.bar = status.bar, (description, 0.0, float(total), time.monotonic())
        try:
            yield Advance(status=status)
        finally:
            with status.lock:
                status.bar = previous
        return
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield Advance(progress, task)


class Advance:
    def __init__(self, progress: Progress | None = None, task: object = None, status: _Status | None = None) -> None:
        self._progress, self._task, self._status = progress, task, status

    def __call__(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)
        elif self._status is not None:
            with self._status.lock:
                description, done, total, started = self._status.bar
                self._status.bar = (description, done + n, total, started)
