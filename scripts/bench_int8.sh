#!/usr/bin/env bash
# int8 against fp32 on onnxruntime, side by side in one run: extraction rate of the same
# photos for each backbone (rounds alternate fp32 and int8; the quantized model is
# calibrated and cached before timing), and top-1 on val/ for a head trained on train/:
# fp32 features, the fp32 head on int8 features, and a head retrained on int8 features.
#
#   scripts/bench_int8.sh                 # efficientnet-lite2 and inception-v3
#   BACKBONES=efficientnet-lite2 ROUNDS=3 IMAGES=200 ACCURACY=efficientnet-lite2 scripts/bench_int8.sh
#
# Inception V3 runs the golden tests' deterministic formula weights (installed with
# scripts/bench_extract.py install-inception; real weights cannot be fetched here): its
# rate is real, its accuracy is not that of the real network, so ACCURACY defaults to Lite2
# (ACCURACY= , empty, measures rates only).
set -euo pipefail
cd "$(dirname "$0")/.."
graft=${GRAFT:-target/release/graft}
data=${DATA:-../shared/data/grocery-store/dataset}
export GRAFT_HOME=${GRAFT_HOME:-$PWD/target/graft-home}
read -r -a backbones <<<"${BACKBONES:-efficientnet-lite2 inception-v3}"
read -r -a accuracy <<<"${ACCURACY-efficientnet-lite2}"
rounds=${ROUNDS:-2}
images=${IMAGES:-200}
calibration_images=${CALIBRATION_IMAGES:-200}
work=target/bench-int8
mkdir -p "$work"

# The timed photos: the first $images of val/ by sorted path, copied once.
photos=$work/photos
if [[ ! -d $photos ]]; then
    mkdir -p "$photos"
    find "$data/val" -type f -iname '*.jpg' | sort | head -n "$images" | while read -r f; do
        cp "$f" "$photos/$(echo "${f#"$data"/val/}" | tr '/' '_')"
    done
fi

for b in "${backbones[@]}"; do
    if [[ $b == inception-v3 && ! -f $GRAFT_HOME/models/inception-v3.safetensors ]]; then
        ${PYTHON:-python3} scripts/bench_extract.py install-inception "$GRAFT_HOME" >&2
    fi
done

calib=(--calibration "$data/train" --calibration-images "$calibration_images")
rate() { # rate BACKBONE PRECISION: prints images/s of one --no-cache extraction
    local line
    line=$("$graft" extract "$photos" --backbone "$1" --engine onnxruntime --no-cache \
        --precision "$2" "${calib[@]}" --output "$work/$1-$2.safetensors" 2>"$work/stderr.txt") ||
        { cat "$work/stderr.txt" >&2; exit 1; }
    echo "$line" | sed -E 's/.*: ([0-9.]+) images\/s.*/\1/'
}

echo "## extraction rate, $(nproc) cores, $(ls "$photos" | wc -l) photos of val/, $rounds round(s), onnxruntime"
echo "| backbone | fp32 images/s | int8 images/s | int8 / fp32 |"
echo "|---|---|---|---|"
for b in "${backbones[@]}"; do
    rate "$b" int8 >/dev/null # calibrates once and caches the quantized model
    fp=() q=()
    for ((r = 0; r < rounds; r++)); do
        fp+=("$(rate "$b" fp32)")
        q+=("$(rate "$b" int8)")
    done
    python3 - "$b" "${fp[*]}" "${q[*]}" <<'PY'
import sys
b, fp, q = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
mf, mq = sum(fp) / len(fp), sum(q) / len(q)
print(f"| {b} | {mf:.1f} ({', '.join(f'{x:.1f}' for x in fp)}) | {mq:.1f} ({', '.join(f'{x:.1f}' for x in q)}) | {mq / mf:.2f}x |")
PY
done

top1() { # top1 BUNDLE PRECISION: top-1 on val/ in percent
    "$graft" evaluate "$1" "$data/val" --precision "$2" "${calib[@]}" --format json \
        --output-dir "$work/evaluation" --bottleneck-dir "$work/bottlenecks" 2>"$work/stderr.txt" |
        python3 -c 'import json, sys; print("%.2f" % (100 * json.load(sys.stdin)["top1_accuracy"]))' ||
        { cat "$work/stderr.txt" >&2; exit 1; }
}
if [[ ${#accuracy[@]} -gt 0 ]]; then
    echo
    echo "## top-1 on val/ (head trained on train/, graft train defaults)"
    echo "| backbone | fp32 | fp32 head on int8 features | head retrained on int8 features |"
    echo "|---|---|---|---|"
fi
for b in "${accuracy[@]}"; do
    for p in fp32 int8; do
        rm -rf "$work/$b-$p-model"
        "$graft" train "$data/train" --backbone "$b" --precision "$p" "${calib[@]}" \
            --bottleneck-dir "$work/bottlenecks" --output "$work/$b-$p-model" >"$work/train-$b-$p.txt" 2>&1 ||
            { cat "$work/train-$b-$p.txt" >&2; exit 1; }
    done
    echo "| $b | $(top1 "$work/$b-fp32-model" fp32) | $(top1 "$work/$b-fp32-model" int8) | $(top1 "$work/$b-int8-model" int8) |"
done
