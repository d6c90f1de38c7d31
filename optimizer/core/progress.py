"""Progress and status output on stderr (stdout stays free for results and generated text).

`quiet=True` everywhere silences progress for library use and tests.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

_console = Console(stderr=True, highlight=False)


def console() -> Console:
    return _console


@contextmanager
def step(title: str, quiet: bool = False) -> Iterator[None]:
    """Announce a step, then report its wall time when it ends."""
    start = time.perf_counter()
    if not quiet:
        _console.print(f"[bold]{title}[/bold] ...")
    yield
    if not quiet:
        _console.print(f"  done in {time.perf_counter() - start:.1f} s")


@contextmanager
def bar(description: str, total: float, quiet: bool = False) -> Iterator["Advance"]:
    """A progress bar; the yielded callable advances it by n units."""
    if quiet:
        yield Advance(None, None)
        return
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield Advance(progress, task)


class Advance:
    def __init__(self, progress: Progress | None, task: object) -> None:
        self._progress, self._task = progress, task

    def __call__(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)
