# The int4 GEMM of this tree against other trees' (snapshots of earlier revisions or variants), side
# by side in one call: LinearInt4's forms at the 1B shape (q/k/v, o, down, lm_head: K's parts stored,
# --fill 264, c12000; gate/up with SwiGLU in clusters, --fill 132, c10000, and --fill 128: K not split)
# and cuBLAS fp16, at ROWS rows (16, 64 and 128), ROUNDS rounds, the trees' order turning each round
# (torch and nvcc only, no staging; ~25 s a tree a round on an H100). NEW_PARTS / NEW_SWIGLU: more
# configurations of this tree's alone, for the linears with K's parts stored / with SwiGLU (e.g.
# 12004 / 10004, gemm_int4_plan.h's tile 4), in the same processes as its c12000 / c10000:
#   mkdir -p ab/old && git archive REV benchmarks runtime optimizer passes calibration | tar -x -C ab/old
#   bash benchmarks/gpu/int4_ab.sh RESULTS_DIR ROUNDS ab/old [ab/other ...]   # ab/: here, not committed
# Results: RESULTS_DIR/TREE-N.jsonl (TREE: "new" for this one, else the folder's name), and the table
# of each tree's medians over the rounds (the spread in brackets; this tree's other configurations
# as new-cN).
set -e
R=$(mkdir -p "$1" && cd "$1" && pwd)
ROUNDS=$2
shift 2
TREES=("$(cd "$(dirname "$0")/../.." && pwd)")
for tree in "$@"; do TREES+=("$(cd "$tree" && pwd)"); done
name() { [ "$1" = "${TREES[0]}" ] && echo new || basename "$1"; }
ROWS=${ROWS:-16,64,128}
probe() {  # tree, results file, more parts configurations, more SwiGLU configurations
  (cd "$1/benchmarks" &&
   python3 gpu_int4_gemm_probe.py --shapes 1b --rows "$ROWS" --linears qkv,o,down,lm_head --configs "12000$3" \
       --forms cublas-fp16 --fill 264 --results "$2" > /dev/null &&
   python3 gpu_int4_gemm_probe.py --shapes 1b --rows "$ROWS" --linears gate_up --configs "10000$4" \
       --forms cublas-fp16 --fill 132 --results "$2" > /dev/null &&
   python3 gpu_int4_gemm_probe.py --shapes 1b --rows "$ROWS" --linears gate_up --configs 10000 \
       --forms "" --fill 128 --results "$2" > /dev/null)
}
for round in $(seq 1 "$ROUNDS"); do
  n=${#TREES[@]}
  for i in $(seq 0 $((n - 1))); do
    tree=${TREES[$(( (i + round - 1) % n ))]}
    if [ "$(name "$tree")" = new ]; then
      probe "$tree" "$R/new-$round.jsonl" "${NEW_PARTS:+,$NEW_PARTS}" "${NEW_SWIGLU:+,$NEW_SWIGLU}"
    else
      probe "$tree" "$R/$(name "$tree")-$round.jsonl" "" ""
    fi
  done
done
python3 - "$R" <<'PY'
import json, statistics, sys
from pathlib import Path
cells, trees = {}, []
for path in sorted(Path(sys.argv[1]).glob("*-*.jsonl")):
    tree = path.stem.rsplit("-", 1)[0]
    trees += [tree] if tree not in trees else []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        config = r["form"].rsplit("-c", 1)[-1]
        form = "fp16" if r["form"] == "cublas-fp16" else tree if config in ("12000", "10000") else f"{tree}-c{config}"
        trees += [form] if form not in trees and form != "fp16" else []
        linear = r["linear"] + (f"@{r['fill']}" if r["linear"] == "gate_up" and r["fill"] != 132 else "")
        cells.setdefault((r["m"], linear), {}).setdefault(form, []).append(r["us"])
forms = ["fp16", "new"] + sorted(t for t in trees if t != "new")
print(f"{'rows':>4} {'linear':11} " + " ".join(f"{f:>18}" for f in forms) + "  new/other")
for (m, linear), got in sorted(cells.items()):
    med = {f: statistics.median(v) for f, v in got.items()}
    cell = lambda f: f"{med[f]:7.1f} ({min(got[f]):.1f}-{max(got[f]):.1f})" if f in med else "-"
    ratios = " ".join(f"{med['new'] / med[f]:.3f}" for f in forms[2:] if f in med and "new" in med)
    print(f"{m:4d} {linear:11} " + " ".join(f"{cell(f):>18}" for f in forms) + f"  {ratios}")
PY
