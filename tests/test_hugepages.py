"""runtime.hugepages: which mappings it advises, and that it backs new memory with 2 MiB pages."""

from __future__ import annotations

import platform
import sys

import numpy as np
import pytest

from runtime import hugepages
from runtime.hugepages import HUGE_PAGE, added_ranges, anonymous_ranges

SMAPS = """\
55b74c2aa000-55b75a01e000 rw-p 00000000 00:00 0                          [heap]
Rss:              226316 kB
VmFlags: rd wr mr mw me ac
7f3bc5600000-7f3bc5800000 rw-p 00000000 00:00 0
Rss:                1060 kB
VmFlags: rd wr mr mw me ac
7f3bc7000000-7f3bc9600000 r--p 00000000 00:00 0
VmFlags: rd mr mw me ac
7f3bc9600000-7f3bc9800000 rw-s 00000000 00:05 12                         /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms
7f3bdfaa5000-7f3be02a5000 rw-p 00001000 fd:01 4242                       /usr/lib/libfoo.so
VmFlags: rd wr mr mw me ac
7f3cb85ff000-7f3cb8dff000 rw-p 00000000 00:00 0
Rss:                   8 kB
VmFlags: rd wr mr mw me ac nh
7ffd1c0d5000-7ffd1c0f6000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
"""


def test_candidates_are_private_writable_anonymous_memory_and_the_heap_unless_marked_nh():
    assert anonymous_ranges(SMAPS) == [(0x55b74c2aa000, 0x55b75a01e000), (0x7f3bc5600000, 0x7f3bc5800000)]


def test_added_ranges_are_what_is_new_cut_to_whole_huge_pages():
    M = HUGE_PAGE
    before = [(0, 5 * M), (20 * M, 21 * M)]
    after = [(0, 9 * M + 123),  # the heap grew by 4 MiB and a bit: the whole pages of the growth
             (20 * M, 21 * M),  # unchanged
             (30 * M + 5, 34 * M),  # new, unaligned start: from the next 2 MiB boundary
             (40 * M + 1, 41 * M + 1)]  # new, but holds no whole 2 MiB page
    assert added_ranges(before, after) == [(5 * M, 9 * M), (31 * M, 34 * M)]
    assert added_ranges(after, after) == []


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text[text.index("[") + 1:text.index("]")]


def _anon_huge_kb(start: int, end: int) -> int:
    """AnonHugePages of the mappings overlapping [start, end), from /proc/self/smaps."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo < end and hi > start
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are a Linux feature")
def test_memory_mapped_after_track_gets_huge_pages_and_keeps_its_contents():
    before = hugepages.track()
    data = np.arange(8 << 20, dtype=np.float32)  # 32 MiB, mapped after track()
    expected = data.copy()
    result = hugepages.promote(before)
    assert np.array_equal(data, expected)
    start = data.ctypes.data
    mode, kernel = _thp_mode(), tuple(int(x) for x in platform.release().split(".")[:2])
    if mode in ("never", "absent"):
        assert result.collapsed_bytes == 0
        return
    assert result.advised_bytes >= 24 << 20, result
    if kernel >= (6, 1):  # MADV_COLLAPSE
        assert result.collapsed_bytes >= 24 << 20, result
        assert _anon_huge_kb(start, start + data.nbytes) >= 24 << 10


def test_promote_without_a_snapshot_does_nothing():
    result = hugepages.promote(None)
    assert (result.advised_bytes, result.collapsed_bytes) == (0, 0) and result.reason


def test_engine_loads_with_and_without_huge_pages_alike(tmp_path, smol_tokenizer_dir):
    from optimizer.pipeline import BuildOptions, build_engine
    from runtime import Engine, SamplingParams

    out = tmp_path / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama",
                              tokenizer=str(smol_tokenizer_dir), quiet=True))
    plain = Engine.load(out, huge_pages=False)
    huge = Engine.load(out)
    assert plain.session.huge_pages is None
    assert isinstance(huge.session.huge_pages, hugepages.Promotion)
    prompt = plain.encode("Hello there")
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    assert plain.generate_ids(prompt, params).token_ids == huge.generate_ids(prompt, params).token_ids


def test_the_environment_turns_the_default_off_but_not_an_explicit_choice(monkeypatch):
    monkeypatch.delenv(hugepages.ENV, raising=False)
    assert hugepages.wanted(None) and not hugepages.wanted(False)
    monkeypatch.setenv(hugepages.ENV, "0")
    assert not hugepages.wanted(None) and hugepages.wanted(True)
