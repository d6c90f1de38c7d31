# LinearInt4's GEMM (c12000: K's parts stored, programmatic launches, grid aimed at 264 blocks) with K in
# at most 8 parts (LinearInt4's, gemm_int4::kClusterParts) against 16, the 1B shape's q/k/v, o and down at 8-128 rows
# and the 8B shape's at 16 and 64; torch and nvcc only (run30, ~30 s on an H100: 16 no faster):
#   bash benchmarks/gpu/int4_parts_probe.sh RESULTS.jsonl
set -e
R=${1:-/tmp/gd/parts.jsonl}
mkdir -p "$(dirname "$R")"
cd benchmarks
for most in 8 16; do
  for shape_rows in 1b:8,16,32,64,128 8b:16,64; do
    python3 gpu_int4_gemm_probe.py --shapes ${shape_rows%:*} --rows ${shape_rows#*:} --linears qkv,o,down \
        --configs 12000 --forms "" --fill 264 --most-parts $most --results $R > /dev/null
  done
done
python3 - "$R" <<'PY'
import json, sys
cells = {}
for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()):
    cells.setdefault((r["shape"], r["m"], r["linear"]), {})[r["most_parts"]] = (r["us"], r["splits"])
for (shape, m, linear), by in sorted(cells.items()):
    times = "  ".join(f"<={p}: {us:6.1f} us ({s} parts)" for p, (us, s) in sorted(by.items()))
    print(f"{shape} {m:4d} rows {linear:5s} {times}")
PY
