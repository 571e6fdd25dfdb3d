#!/usr/bin/env bash
# The GPU checks of gpulab in a few calls on a lent device machine (no installs there: the image
# has torch and the rest; gpulab runs from src/). Each step writes its output to $OUT/STEP.txt
# (and JSON where the script makes one) and stays under the per-call limit of 10 minutes.
#
# Each step has its own time limit (seconds, after the name) so that a call's steps end well
# inside the 10 minutes; a step cut off keeps what it printed so far.
#
#   bash benchmarks/device_run.sh tests probe style        # <= 9.5 min
#   bash benchmarks/device_run.sh cnn feed                 # <= 9.5 min
#   bash benchmarks/device_run.sh caption bench            # <= 9.5 min
#   bash benchmarks/device_run.sh share                    # <= 7 min: share vs by hand, GPU
#   bash benchmarks/device_run.sh full-start full-wait     # <= 9.5 min, then again
#   bash benchmarks/device_run.sh full-wait                #   until it says "finished"
#
# With 30 minutes of device time for everything still open (style, the loaders alone, bench
# --full), in this order, each call fired as soon as the last returns (the machine is held
# only briefly between calls):
#   bash benchmarks/device_run.sh tests style              # ~7 min
#   bash benchmarks/device_run.sh feed full-start          # ~5 min, then bench --full runs on
#   bash benchmarks/device_run.sh full-wait                # ~9 min, then again until finished
#
# full-start runs `gpulab bench --full` (CPU and GPU) in its own process session, so it goes on
# between calls while the machine is held (call again within its warm period); full-wait waits
# up to 9 minutes, prints progress and, once the suite has finished, packs the report. On the
# 2-core development CPU the CPU half took 31 minutes (style 616 s, cnn 665 s, caption 446 s);
# with the GPU host's cores, expect roughly a quarter of that, plus a few minutes of GPU rows.
set -u
OUT=${OUT:-/tmp/gpulab-device}
mkdir -p "$OUT"
export PYTHONPATH=src
py=${PYTHON:-python3}

step() {
  local name=$1 limit=$2; shift 2
  echo "== $name (limit $limit s): $*"
  local start=$SECONDS
  PYTHONUNBUFFERED=1 timeout -s INT -k 10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "   rc=$rc, $((SECONDS - start)) s; last lines:"
  tail -n 25 "$OUT/$name.txt"
}

for what in "$@"; do
  case $what in
    tests)   step tests 240 $py -m pytest -q -p no:cacheprovider tests -m cuda --ignore tests/test_web.py ;;
    probe)   step probe 150 $py -m gpulab probe --json "$OUT/probe.json" ;;
    cnn)     step cnn 230 $py benchmarks/cnn_speed.py --steps 40 --warmup 10 --cpu-steps 2 ;;
    style)   step style 200 $py benchmarks/style_speed.py --cpu-steps 3 ;;
    feed)    step feed 360 $py benchmarks/feed_speed.py --generate 20000 ;;
    caption) step caption 170 $py benchmarks/caption_speed.py --devices cpu,cuda ;;
    share)   step share 420 $py benchmarks/share_check.py --device cuda --preset default --repeats 2 \
               --sets "cnn:model=resnet18,steps_per_epoch=150 stocks:epochs=30" --modes timeslice,mps ;;
    bench)   step bench 390 $py -m gpulab bench --devices cpu,cuda --repeats 1 --out "$OUT/bench" --force
             # the report's files in one archive (only a few files come back from $OUT)
             tar czf "$OUT/bench.tgz" -C "$OUT" --exclude='bench/runs' bench && rm -rf "$OUT/bench" ;;
    full-start)
      rm -rf /tmp/gpulab-full /tmp/gpulab-full.done
      setsid nohup bash -c "PYTHONUNBUFFERED=1 $py -m gpulab bench --full --devices cuda,cpu \
        --repeats 1 --out /tmp/gpulab-full --force > /tmp/gpulab-full.txt 2>&1; \
        echo \$? > /tmp/gpulab-full.done" > /dev/null 2>&1 &
      echo "== full-start: bench --full running in the background" ;;
    full-wait)
      for _ in $(seq 54); do [ -f /tmp/gpulab-full.done ] && break; sleep 10; done
      tail -n 40 /tmp/gpulab-full.txt
      if [ -f /tmp/gpulab-full.done ]; then
        echo "== full: finished, rc=$(cat /tmp/gpulab-full.done)"
        tar czf "$OUT/full.tgz" -C /tmp --exclude='gpulab-full/runs' gpulab-full
      else
        echo "== full: still running; call full-wait again"
      fi ;;
    threads) step threads 75 bash -c 'for t in 1 4 16; do echo "threads $t:"; '"$py"' -m gpulab train stocks --device cpu --set epochs=1 --set eval_every=0 --checkpoint-every 0 --threads $t --quiet --out /tmp/threads | grep throughput; done' ;;
    *) echo "unknown step $what: tests probe threads cnn feed style caption bench full-start full-wait"; exit 2 ;;
  esac
done
