"""Back the engine's weights with 2 MiB pages (Linux transparent huge pages).

A batch-1 decode step reads every weight once: ~80 MB for SmolLM2-135M in int4 g128. With
4 KiB pages that is ~20,000 pages a step, far more than the TLB holds, so nearly every page
costs a page walk (and in a virtual machine, a nested one). With 2 MiB pages it is ~40.
On the 2-core CPU machine (a VM) SmolLM2-135M int4 decodes at batch 1 ~10% faster with them
(five alternating process pairs: x1.04 to x1.21; benchmarks/results/int4-formats/).

Most Linux systems run transparent huge pages in "madvise" mode: memory gets 2 MiB pages
only where a program asks. onnxruntime does not ask, and its allocations are not ours to
make (nor can we tell them apart: the allocator hands a new session memory that an earlier
one freed), so after a session is created `promote` asks for the process's resident
anonymous memory, mapping by mapping: madvise(MADV_HUGEPAGE) for future faults, then
MADV_COLLAPSE (Linux 6.1+) to move the pages already there now. Mappings that are mostly not
resident are left alone (collapsing them would fill them: more memory for nothing), and so
are those marked "no huge pages" (thread stacks). Either call failing leaves the memory as it
was: this is a speed hint only, never a change in what the session computes. Build-time
sessions (verification, the accuracy gate) leave it off. `Engine.load(huge_pages=False)` or
OPTIMIZER_HUGE_PAGES=0 in the environment turns it off; it is process-wide, so a later load
with it on covers an earlier engine's memory too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from dataclasses import dataclass, replace

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25  # Linux 6.1+
SMAPS = "/proc/self/smaps"
ENV = "OPTIMIZER_HUGE_PAGES"  # "0" turns the default off (CLI, server, benchmarks)
MIN_RESIDENT = 0.9  # a mapping is promoted when at least this fraction of it is in memory
REASONS = {errno.EINVAL: "transparent huge pages off, or Linux < 6.1",
           errno.ENOMEM: "no free 2 MiB page now", errno.EAGAIN: "pages busy now, try later"}


@dataclass(frozen=True)
class Promotion:
    advised_bytes: int  # ranges given MADV_HUGEPAGE
    collapsed_bytes: int  # of those, on 2 MiB pages now (MADV_COLLAPSE)
    reason: str = ""  # what was not done and why ("" when all was)


def wanted(huge_pages: bool | None) -> bool:
    """An explicit choice wins; otherwise on, unless the environment says OPTIMIZER_HUGE_PAGES=0."""
    return huge_pages if huge_pages is not None else os.environ.get(ENV, "1") != "0"


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    rss: int  # bytes resident
    no_huge: bool  # VmFlags nh


def anonymous_mappings(smaps_text: str) -> list[Mapping]:
    """Writable private anonymous mappings (and the brk heap) of a /proc/<pid>/smaps text."""
    mappings, current = [], None
    for line in smaps_text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
            if current is not None:
                mappings.append(current)
            current = None
            path = fields[5] if len(fields) > 5 else ""
            if fields[1].startswith("rw") and fields[1][3] == "p" and (not path or path == "[heap]"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = Mapping(start, end, 0, False)
        elif current is not None and fields[0] == "Rss:":
            current = replace(current, rss=int(fields[1]) * 1024)
        elif current is not None and fields[0] == "VmFlags:":
            current = replace(current, no_huge="nh" in fields[1:])
    if current is not None:
        mappings.append(current)
    return mappings


def candidates(mappings: list[Mapping], min_resident: float = MIN_RESIDENT) -> list[tuple[int, int]]:
    """The whole 2 MiB pages inside each mostly resident mapping not marked nh."""
    ranges = []
    for m in mappings:
        if m.no_huge or m.rss < min_resident * (m.end - m.start):
            continue
        start, end = -(-m.start // HUGE_PAGE) * HUGE_PAGE, m.end // HUGE_PAGE * HUGE_PAGE
        if end > start:
            ranges.append((start, end))
    return ranges


def promote(min_resident: float = MIN_RESIDENT) -> Promotion:
    """Ask for 2 MiB pages on the process's resident anonymous memory."""
    if not sys.platform.startswith("linux"):
        return Promotion(0, 0, "not Linux")
    try:
        with open(SMAPS) as f:
            mappings = anonymous_mappings(f.read())
    except OSError as e:
        return Promotion(0, 0, f"cannot read {SMAPS}: {e.strerror}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = collapsed = 0
    failed: dict[int, int] = {}  # errno -> bytes left on 4 KiB pages
    for start, end in candidates(mappings, min_resident):
        if libc.madvise(start, end - start, MADV_HUGEPAGE) == 0:
            advised += end - start
            if libc.madvise(start, end - start, MADV_COLLAPSE) == 0:
                collapsed += end - start
                continue
        err = ctypes.get_errno()
        failed[err] = failed.get(err, 0) + end - start
    return Promotion(advised, collapsed, madvise_failures(failed))


def madvise_failures(failed: dict[int, int]) -> str:
    """'' when nothing failed; else how much memory each error left on 4 KiB pages, e.g.
    'madvise left 12 MiB: ENOMEM (no free 2 MiB page now)'."""
    if not failed:
        return ""
    parts = [f"{n >> 20} MiB: {errno.errorcode.get(e, e)}" + (f" ({REASONS[e]})" if e in REASONS else "")
             for e, n in sorted(failed.items())]
    return "madvise left " + "; ".join(parts)
