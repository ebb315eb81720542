#!/usr/bin/env bash
# Parquet features: bytes per image and extraction time with and without Parquet output.
#
#   scripts/bench_parquet.sh [PHOTOS]   (default 300: the first 300 photos, sorted, of
#                                        ../shared/data/grocery-store/dataset/train)
#
# For each backbone in BACKBONES (default: efficientnet-lite2 inception-v3) it extracts the
# same photos with --no-cache twice, to safetensors and to Parquet, alternating, and prints
# the seconds of each and the Parquet file's bytes per row. GRAFT_HOME must hold the
# weights (Inception V3: scripts/bench_extract.py install-inception GRAFT_HOME installs the
# formula weights, which run at the real weights' speed).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-300}"
graft="${GRAFT:-target/release/graft}"
read -r -a backbones <<<"${BACKBONES:-efficientnet-lite2 inception-v3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src=../shared/data/grocery-store/dataset/train
(cd "$src" && find . -name '*.jpg' | sort | head -n "$n") | while read -r rel; do
    mkdir -p "$work/photos/$(dirname "$rel")"
    cp "$src/$rel" "$work/photos/$rel"
done
echo "| backbone | D | photos | safetensors s | parquet s | parquet bytes/image | safetensors bytes/image |"
echo "|---|---|---|---|---|---|---|"
for b in "${backbones[@]}"; do
    t() { local s; s=$(date +%s.%N); "$graft" extract "$work/photos" --backbone "$b" --no-cache -o "$1" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
    ts=$(t "$work/f.safetensors")
    tp=$(t "$work/f.parquet")
    rows=$(find "$work/photos" -name '*.jpg' | wc -l)
    dim=$([[ $b == inception-v3 ]] && echo 2048 || echo 1280)
    echo "| $b | $dim | $rows | $ts | $tp | $(( $(stat -c %s "$work/f.parquet") / rows )) | $(( $(stat -c %s "$work/f.safetensors") / rows )) |"
done
