#!/usr/bin/env bash
# The GPU checks of gpulab in a few calls on a lent device machine (no installs there: the image
# has torch and the rest; gpulab runs from src/). Each step writes its output to $OUT/STEP.txt
# (and JSON where the script makes one) and stays under the per-call limit of 10 minutes.
#
#   bash benchmarks/device_run.sh tests probe      # ~4 min
#   bash benchmarks/device_run.sh cnn              # ~6 min
#   bash benchmarks/device_run.sh feed style       # ~8 min
#   bash benchmarks/device_run.sh caption bench    # ~8 min
set -u
OUT=${OUT:-/tmp/gpulab-device}
mkdir -p "$OUT"
export PYTHONPATH=src
py=${PYTHON:-python3}

step() {
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  timeout 540 "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "   rc=$rc, $((SECONDS - start)) s; last lines:"
  tail -n 25 "$OUT/$name.txt"
}

for what in "$@"; do
  case $what in
    tests)   step tests $py -m pytest -q -p no:cacheprovider tests -m cuda ;;
    probe)   step probe $py -m gpulab probe --json "$OUT/probe.json" ;;
    cnn)     step cnn $py benchmarks/cnn_speed.py --steps 40 --warmup 10 ;;
    feed)    step feed $py benchmarks/feed_speed.py --generate 20000 --steps 60 ;;
    style)   step style $py benchmarks/style_speed.py ;;
    caption) step caption $py benchmarks/caption_speed.py --devices cpu,cuda ;;
    bench)   step bench $py -m gpulab bench --devices cpu,cuda --repeats 2 --out "$OUT/bench" --force ;;
    *) echo "unknown step $what: tests probe cnn feed style caption bench"; exit 2 ;;
  esac
done
