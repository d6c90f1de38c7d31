"""One build at a time per output path, and no debris from builds that were killed.

`output_lock(out)` holds an exclusive `flock` on `.<out>.lock` beside `out` for the whole
build. The kernel drops a flock when its holder dies, SIGKILL included, so a lock left by a
killed build never blocks the next one (no pid check, which a recycled pid would fool). A
second build into the same `out` while the first runs is refused at once, naming the holder.

Holding the lock means no other build of `out` is alive, so whatever a killed build left
beside `out` can go: staging directories (`.<out>.building-*`, which have no manifest and
never load) are removed; a `.<out>.old-*` directory, left when a build with --overwrite was
killed between moving the old engine aside and moving the new one in, is put back when `out`
is missing (it is the previous, complete engine) and removed otherwise. Calibration's kept
layers (`.<out>.layers/`, for --resume) are not touched.

The lock file is removed on release; the holder unlinks it while still holding the lock, and a
waiter checks after locking that the path still names the file it locked (else it retries).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from optimizer.core.errors import InputError

MANIFEST = "manifest.json"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextmanager
def output_lock(out: Path, report=print) -> Iterator[None]:
    """Hold `out`'s build lock (refusing when another build holds it), after clearing what
    killed builds left; `report` gets one line per thing cleared."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    fd = _acquire(path, out)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for line in clear_debris(out):
            report(line)
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock


def _acquire(path: Path, out: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"another build is writing {out} (process {holder} holds {path})",
                             hint="wait for that build to finish, or choose another --out path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we waited: lock the new one


def clear_debris(out: Path) -> list[str]:
    """Remove (or restore) what killed builds of `out` left beside it; one line per item.
    Call only while holding `out`'s lock."""
    lines = []
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        previous = old / "engine"
        if not out.exists() and (previous / MANIFEST).is_file():
            os.rename(previous, out)
            lines.append(f"restored the previous engine at {out} (a build replacing it was interrupted)")
        shutil.rmtree(old, ignore_errors=True)
    staged = sorted(out.parent.glob(f".{out.name}.building-*"))
    for tmp in staged:
        shutil.rmtree(tmp, ignore_errors=True)
    if staged:
        lines.append(f"removed {len(staged)} unfinished staging director{'y' if len(staged) == 1 else 'ies'} "
                     f"of an interrupted build beside {out}")
    return lines
