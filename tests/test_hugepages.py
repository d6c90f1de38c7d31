"""runtime.hugepages: which mappings it promotes, and that it backs resident memory with 2 MiB pages."""

from __future__ import annotations

import platform
import sys

import numpy as np
import pytest

from runtime import hugepages
from runtime.hugepages import HUGE_PAGE, Mapping, anonymous_mappings, candidates

SMAPS = """\
55b74c200000-55b75a000000 rw-p 00000000 00:00 0                          [heap]
Size:             227328 kB
Rss:              226316 kB
VmFlags: rd wr mr mw me ac
7f3bc5600000-7f3bc5800000 rw-p 00000000 00:00 0
Rss:                1060 kB
VmFlags: rd wr mr mw me ac
7f3bc7000000-7f3bc9600000 r--p 00000000 00:00 0
Rss:               38912 kB
VmFlags: rd mr mw me ac
7f3bc9600000-7f3bc9800000 rw-s 00000000 00:05 12                         /dev/zero (deleted)
Rss:                2048 kB
VmFlags: rd wr sh mr mw me ms
7f3bdfaa5000-7f3be02a5000 rw-p 00001000 fd:01 4242                       /usr/lib/libfoo.so
Rss:                8192 kB
VmFlags: rd wr mr mw me ac
7f3cb8600000-7f3cb8e00000 rw-p 00000000 00:00 0
Rss:                8192 kB
VmFlags: rd wr mr mw me ac nh
7ffd1c0d5000-7ffd1c0f6000 rw-p 00000000 00:00 0                          [stack]
Rss:                 132 kB
VmFlags: rd wr mr mw me gd ac
"""


def test_private_writable_anonymous_mappings_and_the_heap_are_read_with_rss_and_nh():
    assert anonymous_mappings(SMAPS) == [
        Mapping(0x55b74c200000, 0x55b75a000000, 226316 * 1024, False),
        Mapping(0x7f3bc5600000, 0x7f3bc5800000, 1060 * 1024, False),
        Mapping(0x7f3cb8600000, 0x7f3cb8e00000, 8192 * 1024, True)]


def test_candidates_are_the_whole_huge_pages_of_mostly_resident_mappings_not_marked_nh():
    M = HUGE_PAGE
    mappings = [Mapping(0, 8 * M, 8 * M, False),  # resident: all of it
                Mapping(10 * M + 5, 14 * M + 7, 4 * M, False),  # unaligned: the whole pages inside
                Mapping(20 * M, 30 * M, 2 * M, False),  # mostly not resident: collapsing would fill it
                Mapping(40 * M, 44 * M, 4 * M, True),  # nh (a thread stack)
                Mapping(50 * M + 1, 51 * M + 1, M, False)]  # holds no whole 2 MiB page
    assert candidates(mappings) == [(0, 8 * M), (11 * M, 14 * M)]
    assert candidates(anonymous_mappings(SMAPS)) == [(0x55b74c200000, 0x55b75a000000)]


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
def test_resident_memory_gets_huge_pages_and_keeps_its_contents():
    data = np.arange(8 << 20, dtype=np.float32)  # 32 MiB, every page written
    expected = data.copy()
    result = hugepages.promote()
    assert np.array_equal(data, expected)
    start = data.ctypes.data
    mode, kernel = _thp_mode(), tuple(int(x) for x in platform.release().split(".")[:2])
    if mode == "absent" or kernel < (6, 1):  # no THP, or no MADV_COLLAPSE (which ignores the THP mode)
        assert result.collapsed_bytes == 0 and "EINVAL" in result.reason
        return
    assert result.advised_bytes >= 24 << 20, result
    if result.collapsed_bytes < 24 << 20 and ("ENOMEM" in result.reason or "EAGAIN" in result.reason):
        pytest.skip(f"the kernel had no 2 MiB pages to give at this moment: {result.reason}")
    assert result.collapsed_bytes >= 24 << 20, result
    assert _anon_huge_kb(start, start + data.nbytes) >= 24 << 10


def test_madvise_failures_say_what_was_left_and_why():
    import errno

    assert hugepages.madvise_failures({}) == ""
    text = hugepages.madvise_failures({errno.EINVAL: 4 << 20, errno.ENOMEM: 2 << 20})
    assert text == ("madvise left 2 MiB: ENOMEM (no free 2 MiB page now); "
                    "4 MiB: EINVAL (transparent huge pages off, or Linux < 6.1)")


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
