"""benchmarks/ncu_summary.py on made-up Nsight Compute CSV exports (ncu itself needs a GPU): the
sections that matter from the details page, the most stalled SASS lines with their share, the
samples before, in and after the main loop with their stall reasons, the pipes' shares of their
peaks from the raw page, and a file in another shape named with its columns."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ncu_summary  # noqa: E402

DETAILS = '''==PROF== Connected
"ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"
"0","gemm","GPU Speed Of Light Throughput","DRAM Throughput","%","5.10"
"0","gemm","Warp State Statistics","Warp Cycles Per Issued Instruction","cycle","12.50"
"0","gemm","Source Counters","Branch Instructions","inst","1,024"
'''

# as ncu 2025+ writes the source page: the kernel's name on a line of its own above the header
# (run17, an H100: the first version read that line as the header)
SASS = '''"Kernel Name","void gemm_int4_mma::gemm_int4_mma_kernel<(int)8, (int)1, (int)4>(gemm_int4_mma::Args)",
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)"
"0x1400","DEPBAR.LE SB0, 0x2","600","590"
"0x1410","BAR.SYNC.DEFER_BLOCKING 0x0","300","290"
"0x1420","HMMA.16816.F32 R56, R20, R18, R56","100","50"
'''


def test_the_sections_that_say_where_a_kernel_waits_and_the_most_stalled_instructions(tmp_path):
    (tmp_path / "d.csv").write_text(DETAILS)
    (tmp_path / "s.csv").write_text(SASS)
    details = ncu_summary.details_lines(ncu_summary.read(tmp_path / "d.csv"))
    assert details == ["GPU Speed Of Light Throughput: DRAM Throughput = 5.10 %",
                       "Warp State Statistics: Warp Cycles Per Issued Instruction = 12.50 cycle"]
    stalls = ncu_summary.stall_lines(ncu_summary.read(tmp_path / "s.csv"), top=2)
    assert stalls[0] == "stall samples: 1000"
    assert stalls[1].split()[:3] == ["600", "60.0%", "0x1400"] and "DEPBAR" in stalls[1] and len(stalls) == 3


def test_a_file_in_another_shape_is_named_with_its_columns(tmp_path):
    (tmp_path / "x.csv").write_text('"Name","Value"\n"a","1"\n')
    rows = ncu_summary.read(tmp_path / "x.csv")
    assert "no" in ncu_summary.details_lines(rows)[0] and "'Name'" in ncu_summary.details_lines(rows)[0]
    assert ncu_summary.stall_lines(rows, 5)[0].startswith("sass: no 'Warp Stall Sampling (All...' column among")


# a kernel's SASS: a prologue of two instructions, a loop back over the first barrier, an exit
LOOP = ('"Address","Source","Warp Stall Sampling (All Samples)","stall_long_sb","stall_barrier",'
        '"stall_long_sb (Not Issued)","stall_drain"\n') + '''\
"0x7f00","LDC R1, c[0x0][0x28]","10","10","0","10","0"
"0x7f10","S2R R0, SR_TID.X","10","0","0","0","0"
"0x7f20","BAR.SYNC.DEFER_BLOCKING 0x0","30","0","30","0","0"
"0x7f30","@P0 BRA 0x7f20","30","30","0","30","0"
"0x7f40","EXIT","20","0","0","0","20"
'''


def test_the_samples_before_in_and_after_the_main_loop_with_their_reasons(tmp_path):
    (tmp_path / "s.csv").write_text(LOOP)
    rows = ncu_summary.read(tmp_path / "s.csv")
    assert ncu_summary.region_lines(rows) == [
        "before the loop: 2 instructions, 20 samples (20%): long_sb 50%",
        "the loop: 2 instructions, 60 samples (60%): long_sb 50%, barrier 50%",
        "after the loop: 1 instructions, 20 samples (20%): drain 100%"]
    assert ncu_summary.region_lines(rows[:2])[0] == "regions: no loop back over the first block barrier"


# the raw page: metric names, then a units row, then the kernel's values
RAW_NAMES = ["ID", "Kernel Name", "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
             "sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active", "dram__bytes.sum",
             "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed",
             "lts__t_sectors.avg.pct_of_peak_sustained_elapsed", "sm__cycles_active.avg"]
RAW = "\n".join(",".join(f'"{v}"' for v in row) for row in (
    RAW_NAMES, ["", "", "%", "%", "byte", "%", "%", "cycle"],
    ["0", "gemm", "33.34", "17.43", "1,024", "21.83", "23.43", "279,739"])) + "\n"


def test_the_raw_page_gives_the_pipes_and_shared_memory_and_l2_shares_of_their_peaks(tmp_path):
    (tmp_path / "r.csv").write_text(RAW)
    assert ncu_summary.pipe_lines(ncu_summary.read(tmp_path / "r.csv")) == [
        "raw: sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active = 33.34",
        "raw: sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active = 17.43",
        "raw: l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed = 21.83",
        "raw: lts__t_sectors.avg.pct_of_peak_sustained_elapsed = 23.43"]
    assert ncu_summary.pipe_lines([]) == ["raw: no rows"]
