# Wait up to $1 seconds (default 500) for the job run.sh started, then copy /tmp/gd's results
# (*.jsonl, *.csv) and log to $OUT and print the log's last $2 lines: one call that holds the machine
# while the work runs.
end=$(( $(date +%s) + ${1:-500} ))
pid=$(cat /tmp/gd/pid 2>/dev/null)
while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt $end ]; do
  sleep 5; cp /tmp/gd/*.jsonl "$OUT/" 2>/dev/null  # what is there comes back even if the call is cut
done
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo RUNNING || echo FINISHED
cp /tmp/gd/*.jsonl /tmp/gd/*.csv "$OUT/" 2>/dev/null; cp /tmp/gd/log "$OUT/log.txt" 2>/dev/null
grep -v "Warning\|warn(\|W:onnx" /tmp/gd/log | cut -c1-400 | tail -"${2:-15}"
