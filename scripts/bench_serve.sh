#!/usr/bin/env bash
# Load benchmark of `graft serve` on loopback with wrk: throughput and p50/p99 latency at
# concurrency 1, 8 and 32, with dynamic batching on (--max-batch 8) and off (--max-batch 1),
# and each server's peak resident memory (VmHWM). Every wrk run lasts DURATION seconds, so
# the whole benchmark takes about 2 x (4 x DURATION + model load) seconds.
#
#   scripts/bench_serve.sh MODEL PHOTO [DURATION]
#
# MODEL is a bundle from `graft train --output`, PHOTO a JPEG posted as the raw body of
# every request. GRAFT (default target/release/graft) and GRAFT_HOME are honoured.
# Needs wrk: apt-get install -y wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
  echo "usage: scripts/bench_serve.sh MODEL PHOTO [DURATION_SECONDS]" >&2
  exit 2
fi
model=$1
photo=$2
duration=${3:-20}
graft=${GRAFT:-target/release/graft}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
[ -x "$graft" ] || { echo "$graft is missing: cargo build --release" >&2; exit 1; }
[ -f "$photo" ] || { echo "$photo is not a file" >&2; exit 1; }

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# wrk posts the photo and prints one machine-readable line at the end:
# requests, non-2xx answers, socket errors, duration (us), p50 and p99 latency (ms).
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local file = assert(io.open(os.getenv("BENCH_PHOTO"), "rb"))
wrk.body = file:read("*a")
file:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %.1f %.1f\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
export BENCH_PHOTO=$photo

# Starts a server with the given flags; sets server_pid and url.
start_server() {
  "$graft" serve "$model" --addr 127.0.0.1:0 "$@" >"$work/stdout" 2>"$work/stderr" &
  server_pid=$!
  local line=
  for _ in $(seq 1 600); do
    line=$(head -n 1 "$work/stdout" 2>/dev/null || true)
    [ -n "$line" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/stderr" >&2; exit 1; }
    sleep 0.2
  done
  url=${line#listening on }
  case $url in http://127.0.0.1:*) ;; *) echo "no address from graft serve: $line" >&2; exit 1 ;; esac
  for _ in $(seq 1 600); do
    curl -fs "$url/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "graft serve never became ready" >&2
  exit 1
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || { echo "graft serve exited with $?" >&2; exit 1; }
  server_pid=
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
declare -A peak_mib
for mode in batched unbatched; do
  if [ "$mode" = batched ]; then flags=(--max-batch 8); else flags=(--max-batch 1); fi
  start_server "${flags[@]}"
  # Warm-up, not reported.
  wrk -t 1 -c 2 -d 3s --timeout 30s -s "$work/post.lua" "$url/v1/classify" >/dev/null
  for c in 1 8 32; do
    threads=$(( c < 2 ? 1 : 2 ))
    out=$(wrk -t "$threads" -c "$c" -d "${duration}s" --timeout 30s -s "$work/post.lua" "$url/v1/classify")
    read -r _ requests non2xx socket_errors micros p50 p99 <<<"$(grep '^RESULT' <<<"$out")"
    rps=$(awk -v n="$requests" -v us="$micros" 'BEGIN { printf "%.2f", n / (us / 1e6) }')
    rows+=("$mode $c $rps $p50 $p99 $non2xx $socket_errors")
    echo "$mode concurrency $c: $rps requests/s, p50 $p50 ms, p99 $p99 ms ($requests requests, $non2xx non-2xx, $socket_errors socket errors)" >&2
  done
  hwm_kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$server_pid/status")
  peak_mib[$mode]=$(( hwm_kb / 1024 ))
  stop_server
done

echo
echo "graft serve $(basename "$model"), $(nproc) cores, ${duration} s per run, photo $(basename "$photo") ($(stat -c %s "$photo") bytes)"
echo "load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| batching | concurrency | requests/s | p50 ms | p99 ms | non-2xx | socket errors | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  read -r mode c rps p50 p99 non2xx socket_errors <<<"$row"
  peak=${peak_mib[$mode]}
  label=$([ "$mode" = batched ] && echo "on (--max-batch 8)" || echo "off (--max-batch 1)")
  echo "| $label | $c | $rps | $p50 | $p99 | $non2xx | $socket_errors | $peak |"
done
batched32=$(printf '%s\n' "${rows[@]}" | awk '$1 == "batched" && $2 == 32 { print $3 }')
unbatched32=$(printf '%s\n' "${rows[@]}" | awk '$1 == "unbatched" && $2 == 32 { print $3 }')
echo
awk -v b="$batched32" -v u="$unbatched32" 'BEGIN { printf "throughput at concurrency 32, batched / unbatched: %.2fx\n", b / u }'
