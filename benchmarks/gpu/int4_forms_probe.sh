# gemm_int4_mma.cuh's forms side by side (benchmarks/gpu_int4_gemm_probe.py's cN numbering) at
# LinearInt4's grids (--fill 264 with K's parts stored; gate/up with SwiGLU in clusters, fill 132),
# cuBLAS fp16 beside them; the 1B shape at 8-128 rows, 8B at 16 and 64, then the 1B shape at 64 rows
# with 24 distinct weights a linear (colder in L2); torch and nvcc only, no staging (~40-80 s, H100):
#   bash benchmarks/gpu/int4_forms_probe.sh RESULTS.jsonl [CONFIGS [SWIGLU_CONFIGS]]
# run27: CONFIGS 12000,12003 (LinearInt4's tile against two groups of rows), SWIGLU 10000,10003.
set -e
R=${1:-/tmp/gd/forms.jsonl}
CONFIGS=${2:-12000,112000}
SWIGLU=${3:-10000,110000}
mkdir -p "$(dirname "$R")"
cd benchmarks
P="python3 gpu_int4_gemm_probe.py --results $R"
for shape_rows in 1b:8,16,32,64,128 8b:16,64 1b:64@24; do
  shape=${shape_rows%:*} rows=${shape_rows#*:} copies=8
  [ "${rows#*@}" != "$rows" ] && copies=${rows#*@} rows=${rows%@*}
  $P --shapes $shape --rows $rows --linears qkv,o,down,lm_head --configs $CONFIGS --forms cublas-fp16 \
      --fill 264 --copies $copies > /dev/null
  $P --shapes $shape --rows $rows --linears gate_up --configs $SWIGLU --forms cublas-fp16 --fill 132 \
      --copies $copies > /dev/null
done
python3 - "$R" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cells = {}
for r in rows:
    key = (r["shape"], r["m"], r.get("copies", 8), r["linear"])
    cells.setdefault(key, {})[r["form"].replace("mma-int4-", "")] = r["us"]
for (shape, m, copies, linear), forms in sorted(cells.items()):
    times = "  ".join(f"{f} {us:7.1f}" for f, us in sorted(forms.items()))
    print(f"{shape} {m:4d} rows x{copies:<3d} {linear:8s} {times}")
PY
