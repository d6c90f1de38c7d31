"""benchmarks/sass_loop_stats.py's reading of SASS (the loop under the first block barrier, the
opcodes without predicates or modifiers), on a made-up listing: the counting needs no GPU, the
disassembly does (nvcc, cuobjdump, nvdisasm)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sass_loop_stats as stats  # noqa: E402

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDGSTS.E.BYPASS.128 [R7], desc[UR6][R4.64] ;
        /*0020*/                   DEPBAR.LE SB0, 0x2 ;
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0040*/              @!P4 BRA 0x70 ;
        /*0050*/                   HMMA.16816.F32 R56, R20.reuse, R18, R56 ;
        /*0060*/                   HMMA.16816.F32 R40, R20, R16, R40 ;
        /*0070*/               @P0 LDS.128 R12, [R110+0x480] ;
        /*0080*/              @!P0 BRA 0x20 ;
        /*0090*/                   EXIT ;
"""


def test_the_loop_is_what_the_backward_branch_over_the_first_barrier_spans():
    loop = stats.loop_of(stats.parse(LISTING))
    assert loop[0].startswith("DEPBAR") and loop[-1].endswith("BRA 0x20") and len(loop) == 7
    assert [stats.opcode(t) for t in loop].count("HMMA") == 2
    assert stats.opcode("@P0 LDS.128 R12, [R110+0x480]") == "LDS"


def test_a_listing_without_a_barrier_has_no_loop():
    assert stats.loop_of([(0, "MOV R1, c[0x0][0x28]"), (16, "EXIT")]) == []
