# The 1B shape's four int4 linears at 64 rows under Nsight Compute, each as LinearInt4 runs it (q/k/v,
# o, down: K's parts stored, --fill 264, c12000; gate/up with SwiGLU: K's parts in a cluster, --fill
# 132, c10000), and q/k/v by the warpgroup MMA tile (c12002, the probe's only): each GEMM kernel's
# details page (duration, speed of light, pipe utilization, occupancy, warp states) and its SASS
# with the warp stall samples, summed up in the log by benchmarks/ncu_summary.py; torch and nvcc
# only, no staging (86 s on an H100 in run34, clocks locked by ncu at ~1.45 GHz: its durations are
# longer than a run's):
#   mkdir -p /tmp/gd && (setsid nohup bash benchmarks/gpu/int4_ncu.sh > /tmp/gd/log 2>&1 < /dev/null &
#     echo $! > /tmp/gd/pid); sleep 2; bash benchmarks/gpu/wait.sh 280 200
# Results: /tmp/gd/ncu-NAME-details.csv and -sass.csv (wait.sh brings them back); run34's summary:
# benchmarks/results/gpu-decode/run34-int4-ncu.txt.
W=/tmp/gd
mkdir -p $W
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
cd benchmarks
# FORMS="name:linear:config:fill ..." profiles those instead (e.g. lm_head:lm_head:12000:264)
FORMS=${FORMS:-qkv:qkv:12000:264 o:o:12000:264 down:down:12000:264 gate_up:gate_up:10000:132 qkv-wg:qkv:12002:264}
for form in $FORMS; do
  IFS=: read -r name linear config fill <<< "$form"
  timeout 200 "$NCU" -f -o $W/ncu-$name --set full -k regex:gemm_int4_mma_kernel -s 8 -c 1 \
      python3 gpu_int4_gemm_probe.py --shapes 1b --linears "$linear" --rows 64 --configs "$config" \
      --fill "$fill" --forms "" --runs 1 > $W/ncu-$name.out 2>&1 || tail -5 $W/ncu-$name.out
  "$NCU" --import $W/ncu-$name.ncu-rep --page source --csv --print-source sass > $W/ncu-$name-sass.csv \
      2>> $W/ncu.err
  "$NCU" --import $W/ncu-$name.ncu-rep --page details --csv > $W/ncu-$name-details.csv 2>> $W/ncu.err
  "$NCU" --import $W/ncu-$name.ncu-rep --page raw --csv > $W/ncu-$name-raw.csv 2>> $W/ncu.err
  echo "=== $name (c$config, fill $fill)"
  python3 ncu_summary.py --details $W/ncu-$name-details.csv --sass $W/ncu-$name-sass.csv \
      --raw $W/ncu-$name-raw.csv --top 12
done
echo NCU DONE
