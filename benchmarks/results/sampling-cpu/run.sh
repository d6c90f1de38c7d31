set -e
cd /work/main
E=/tmp/cont/smol-int4
if [ ! -f $E/manifest.json ]; then
  .venv/bin/optimize model "$(.venv/bin/optimize asset smollm2-135m)" --quant int4 --kv-slots 16 --out $E -q
fi
uptime
for round in 1 2 3; do
  for co in before after; do
    dir=/work/main; [ $co = before ] && dir=/tmp/cont/before
    for spec in "0 1.0" "0.8 0.95" "0.8 1.0"; do
      set -- $spec
      (cd $dir && PYTHONPATH=$dir /work/main/.venv/bin/python benchmarks/throughput.py ours $E --provider cpu \
         --requests 32 --isl 64 --osl 32 --max-batch 16 --temperature $1 --top-p $2) \
         | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('$co', r['temperature'], r['top_p'], round(r['output_tok_s'],1), round(r['tpot_s_p50']*1e3,1))"
    done
  done
done
uptime
