"""Back an onnxruntime session's weights with 2 MiB pages (Linux transparent huge pages).

A batch-1 decode step reads every weight once: ~80 MB for SmolLM2-135M in int4 g128. With
4 KiB pages that is ~20,000 pages a step, far more than the TLB holds, so nearly every page
costs a page walk (and in a virtual machine, a nested one). With 2 MiB pages it is ~40.
Measured on the 2-core CPU machine (a VM): decode +5% to +12% on SmolLM2-135M int4.

Most Linux systems run transparent huge pages in "madvise" mode: memory gets 2 MiB pages
only where a program asks. onnxruntime does not ask, and its allocations are not ours to
make, so `track` snapshots the process's anonymous mappings before the session is
created, and `promote` asks for the ones the session added afterwards (its weights, packed
or not): madvise(MADV_HUGEPAGE) for future faults, then MADV_COLLAPSE (Linux 6.1+) to move
the pages already there now. Either call failing leaves the memory as it was: this is a
speed hint only, never a change in what the session computes. `Engine.load(huge_pages=False)`
or OPTIMIZER_HUGE_PAGES=0 in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25  # Linux 6.1+
SMAPS = "/proc/self/smaps"
ENV = "OPTIMIZER_HUGE_PAGES"  # "0" turns the default off (CLI, server, benchmarks)


@dataclass(frozen=True)
class Promotion:
    advised_bytes: int  # ranges given MADV_HUGEPAGE
    collapsed_bytes: int  # of those, moved to 2 MiB pages now (MADV_COLLAPSE)
    reason: str = ""  # why nothing was done, if nothing was


def wanted(huge_pages: bool | None) -> bool:
    """An explicit choice wins; otherwise on, unless the environment says OPTIMIZER_HUGE_PAGES=0."""
    return huge_pages if huge_pages is not None else os.environ.get(ENV, "1") != "0"


def anonymous_ranges(smaps_text: str) -> list[tuple[int, int]]:
    """Writable private anonymous mappings (and the brk heap) of a /proc/<pid>/smaps text,
    less those marked "no huge pages" (VmFlags nh: thread stacks, or a library's own choice)."""
    ranges, current = [], None
    for line in smaps_text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
            current = None
            path = fields[5] if len(fields) > 5 else ""
            if fields[1].startswith("rw") and fields[1][3] == "p" and (not path or path == "[heap]"):
                current = tuple(int(x, 16) for x in fields[0].split("-"))
                ranges.append(current)
        elif fields[0] == "VmFlags:" and current is not None and "nh" in fields[1:]:
            ranges.remove(current)
    return ranges


def added_ranges(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `after` not covered by `before`, cut to whole 2 MiB pages (at least one)."""
    added = []
    for start, end in after:
        pieces = [(start, end)]
        for b_start, b_end in before:
            pieces = [p for s, e in pieces for p in _subtract(s, e, b_start, b_end)]
        for s, e in pieces:
            s, e = -(-s // HUGE_PAGE) * HUGE_PAGE, e // HUGE_PAGE * HUGE_PAGE
            if e > s:
                added.append((s, e))
    return added


def _subtract(s: int, e: int, b_s: int, b_e: int) -> list[tuple[int, int]]:
    if b_e <= s or b_s >= e:
        return [(s, e)]
    return [r for r in ((s, b_s), (b_e, e)) if r[1] > r[0]]


def track() -> list[tuple[int, int]] | None:
    """The process's anonymous mappings now (None where there is no /proc/self/smaps)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(SMAPS) as f:
            return anonymous_ranges(f.read())
    except OSError:
        return None


def promote(before: list[tuple[int, int]] | None) -> Promotion:
    """Ask for 2 MiB pages on what was mapped since `track()` returned `before`."""
    if before is None:
        return Promotion(0, 0, "not Linux, or no /proc/self/smaps")
    after = track() or []
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = collapsed = 0
    for start, end in added_ranges(before, after):
        if libc.madvise(start, end - start, MADV_HUGEPAGE) != 0:
            continue  # THP off ("never"), or not an ordinary mapping
        advised += end - start
        if libc.madvise(start, end - start, MADV_COLLAPSE) == 0:
            collapsed += end - start
    return Promotion(advised, collapsed, "" if advised else "the kernel took no huge-page advice here")
