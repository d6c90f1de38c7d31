# LinearInt4's GEMM tile (c12000: 8 warps side by side, each over all of a block's rows) against the
# tile in two groups of rows (c12003: gemm_int4_plan.h's kRowGroups, each warp over half of the rows
# and twice the outputs), LinearInt4's grids (--fill 264 with K's parts stored; gate/up with SwiGLU in
# clusters, fill 132), cuBLAS fp16 beside them; torch and nvcc only, no staging (~3 min on an H100):
#   bash benchmarks/gpu/int4_rowgroups_probe.sh $OUT/rowgroups.jsonl
set -e
R=${1:-/tmp/gd/rowgroups.jsonl}
mkdir -p "$(dirname "$R")"
cd benchmarks
P="python3 gpu_int4_gemm_probe.py --results $R"
for shape_rows in 1b:16,32,64,128 8b:16,64; do
  shape=${shape_rows%:*} rows=${shape_rows#*:}
  $P --shapes $shape --rows $rows --linears qkv,o,down,lm_head --configs 12000,12003 --forms cublas-fp16 \
      --fill 264 > /dev/null
  $P --shapes $shape --rows $rows --linears gate_up --configs 10000,10003 --forms cublas-fp16 --fill 132 > /dev/null
done
python3 gpu_int4_gemm_probe.py --table $R
