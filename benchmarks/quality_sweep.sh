#!/usr/bin/env bash
# Several `benchmarks/quality.py` runs side by side, one per line of a config file "name|train args|quality args":
#     bash benchmarks/quality_sweep.sh configs.txt [--device cuda]
# Each run gets 2 CPU threads (more threads per run only contend); results in bench_out/sweep/<name>/results.json.
set -u
configs=${1:?usage: quality_sweep.sh CONFIGS [quality.py args]}
shift
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p bench_out/sweep
while IFS='|' read -r name targs qargs; do
  [ -z "$name" ] && continue
  # shellcheck disable=SC2086
  python3 benchmarks/quality.py --out "bench_out/sweep/$name" "--train-args=$targs" $qargs "$@" \
    > "bench_out/sweep/$name.out" 2>&1 && echo "$name done" || echo "$name failed (bench_out/sweep/$name.out)" &
done < "$configs"
wait
python3 - <<'PY'
import glob, json
for f in sorted(glob.glob("bench_out/sweep/*/results.json")):
    r = json.load(open(f))
    if "stale_avg_map" in r:
        print(f"{f.split('/')[2]:24s} avg mAP {100 * r['stale_avg_map']:5.1f}  curve masks {100 * r['curve_mask_avg_map']:5.1f}"
              f"  mask tIoU {r['mask_tiou']:.3f}  ratio {r['ratio_to_attainable']:.3f}")
PY
