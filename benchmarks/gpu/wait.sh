# Wait up to $1 seconds (default 500) for the detached benchmark, then copy its results and log
# to $OUT and print the last $2 lines: one call that holds the machine while the work runs.
end=$(( $(date +%s) + ${1:-500} ))
while pgrep -f gpu_decode.py >/dev/null && [ "$(date +%s)" -lt $end ]; do sleep 5; done
pgrep -f gpu_decode.py >/dev/null && echo RUNNING || echo FINISHED
cp /tmp/gd/results.jsonl "$OUT/" 2>/dev/null; cp /tmp/gd/log "$OUT/log.txt" 2>/dev/null
grep -v "Warning\|warn(\|W:onnx" /tmp/gd/log | cut -c1-400 | tail -"${2:-15}"
