# LinearInt4's GEMM tile (c12000: 8 warps side by side, each over all of a block's rows) against the
# tile in two groups of rows (c12003: gemm_int4_plan.h's kRowGroups, each warp over half of the rows
# and twice the outputs), LinearInt4's grids (--fill 264 with K's parts stored; gate/up with SwiGLU in
# clusters, fill 132), cuBLAS fp16 beside them; then the 1B shape at 64 rows with 24 distinct weights a
# linear (the int4 ones colder in L2, as in a model's step); torch and nvcc only, no staging:
#   bash benchmarks/gpu/int4_rowgroups_probe.sh $OUT/rowgroups.jsonl
set -e
R=${1:-/tmp/gd/rowgroups.jsonl}
mkdir -p "$(dirname "$R")"
cd benchmarks
P="python3 gpu_int4_gemm_probe.py --results $R"
for shape_rows in 1b:16,32,64,128 8b:16,64 1b:64@24; do
  shape=${shape_rows%:*} rows=${shape_rows#*:} copies=8
  [ "${rows#*@}" != "$rows" ] && copies=${rows#*@} rows=${rows%@*}
  $P --shapes $shape --rows $rows --linears qkv,o,down,lm_head --configs 12000,12003 --forms cublas-fp16 \
      --fill 264 --copies $copies > /dev/null
  $P --shapes $shape --rows $rows --linears gate_up --configs 10000,10003 --forms cublas-fp16 --fill 132 \
      --copies $copies > /dev/null
done
python3 - "$R" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cells = {}
for r in rows:
    cells.setdefault((r["shape"], r["m"], r.get("copies", 8), r["linear"]), {})[r["form"].replace("mma-int4-", "")] = r["us"]
for (shape, m, copies, linear), forms in sorted(cells.items()):
    print(f"{shape} {m:4d} rows x{copies:<3d} {linear:8s}", "  ".join(f"{f} {us:7.1f}" for f, us in sorted(forms.items())))
PY
