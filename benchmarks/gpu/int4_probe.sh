# The int4 GEMM alone, against cuBLAS fp16 (torch and nvcc only: no staging; ~90 s on an H100, run17):
#   mkdir -p /tmp/gd && (setsid nohup bash benchmarks/gpu/int4_probe.sh > /tmp/gd/log 2>&1 < /dev/null &
#     echo $! > /tmp/gd/pid); sleep 2      # then poll: bash benchmarks/gpu/wait.sh 240 40
# 1. benchmarks/gpu_int4_gemm_probe.py against cuBLAS fp16 and the bands, 8-128 rows at the 1B
#    shape, 16 and 64 at 8B: LinearInt4's GEMM (c12000: the mma.sync tile, K's parts stored,
#    programmatic dependent launches) and the same by Hopper's warpgroup MMA (c12002), the grid
#    aimed at one block an SM; then LinearInt4's grid for the linears without SwiGLU (--fill 264: two
#    blocks an SM);
# 2. one 64-row call of the GEMM (1B q/k/v, K split and its parts stored, as LinearInt4 runs it;
#    1B gate/up, in a cluster) under Nsight Compute: its SASS with
#    the warp stall samples of each instruction (the 30 most stalled printed), and the details page
#    (occupancy, memory workload, warp states) as CSV, both summed up in the log by
#    benchmarks/ncu_summary.py: where the latency-bound kernel's warps wait.
# Results: /tmp/gd/probe.jsonl, mma-*-details.csv, mma-*-sass.csv (wait.sh brings back both kinds).
set -x
W=/tmp/gd
mkdir -p $W
# the compiler whose SASS is profiled (benchmarks/sass_loop_stats.py reads a local nvcc's)
"$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" --version | tail -2
(cd benchmarks && python3 gpu_int4_gemm_probe.py --shapes 1b --rows 8,16,32,64,128 --configs 12000,12002 \
     --results $W/probe.jsonl > /dev/null
 python3 gpu_int4_gemm_probe.py --shapes 8b --rows 16,64 --configs 12000,12002 --results $W/probe.jsonl > /dev/null
 for shape_rows in 1b:8,16,32,64,128 8b:16,64; do
   python3 gpu_int4_gemm_probe.py --shapes ${shape_rows%:*} --rows ${shape_rows#*:} --linears qkv,o,down,lm_head \
       --configs 12000 --forms "" --fill 264 --results $W/probe.jsonl > /dev/null
 done
 for linear_config in qkv:2000 gate_up:0; do
   linear=${linear_config%:*}
   timeout 240 ncu -f -o $W/mma-$linear --set full -k regex:gemm_int4_mma_kernel -s 8 -c 1 \
       python3 gpu_int4_gemm_probe.py --shapes 1b --linears $linear --rows 64 --configs ${linear_config#*:} \
       --forms "" --runs 1 > /dev/null 2>&1
   ncu --import $W/mma-$linear.ncu-rep --page source --csv --print-source sass > $W/mma-$linear-sass.csv \
       2> $W/mma-sass.err
   ncu --import $W/mma-$linear.ncu-rep --page details --csv > $W/mma-$linear-details.csv 2>> $W/mma-sass.err
   python3 ncu_summary.py --details $W/mma-$linear-details.csv --sass $W/mma-$linear-sass.csv
 done
 python3 gpu_int4_gemm_probe.py --table $W/probe.jsonl
)
echo PROBE DONE
