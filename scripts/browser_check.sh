#!/usr/bin/env bash
# Opens a graft report.html in headless Chromium, offline, the way tests/report.rs does, and
# says whether it rendered: the page's scripts finished without error, the confusion heatmap
# and the gallery are there. Leaves a screenshot to look at.
#
#   scripts/browser_check.sh graft-evaluation/report.html [screenshot.png]
#
# Needs Debian's chromium (`apt-get install chromium`); GRAFT_CHROMIUM picks another binary.
set -euo pipefail

page="${1:?usage: $0 REPORT.html [SCREENSHOT.png]}"
shot="${2:-${page%.html}.png}"
[ -f "$page" ] || { echo "$page: no such file" >&2; exit 1; }
browser="${GRAFT_CHROMIUM:-chromium}"
command -v "$browser" >/dev/null || {
  echo "$browser not found: install Debian's chromium (apt-get install chromium) or set GRAFT_CHROMIUM" >&2
  exit 1
}

profile="$(mktemp -d)"
logs="$(mktemp)"
trap 'rm -rf "$profile" "$logs"' EXIT
url="file://$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"
run() {
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --host-resolver-rules='MAP * ~NOTFOUND' --hide-scrollbars --window-size=1400,3600 \
    --enable-logging=stderr --v=0 --user-data-dir="$profile" "$@" "$url"
}

dom="$(run --dump-dom 2>"$logs")"
status=0
if grep -E 'Uncaught|:CONSOLE' "$logs"; then
  echo "FAIL: the page logged to the console (above)" >&2; status=1
fi
# Here-strings, not pipes: `grep -q` closing a pipe early would fail under pipefail.
root_tag="$(grep -o '<html[^>]*>' <<<"$dom" | head -n 1 || true)"
case "$root_tag" in *'data-report-ready="yes"'*) ;; *) echo "FAIL: the page's script did not finish: $root_tag" >&2; status=1 ;; esac
case "$root_tag" in *data-js-error*) echo "FAIL: the page raised an error: $root_tag" >&2; status=1 ;; esac
for id in confusion-heatmap gallery per-class; do
  grep -q "id=\"$id\"" <<<"$dom" || { echo "FAIL: no #$id in the rendered page" >&2; status=1; }
done
thumbnails="$(sed -n '/id="gallery"/,$p' <<<"$dom" | grep -o '<img' | wc -l || true)"

run --screenshot="$shot" 2>/dev/null >/dev/null
[ -s "$shot" ] || { echo "FAIL: no screenshot written" >&2; status=1; }
echo "$page: $(wc -c <"$page") bytes, $thumbnails gallery thumbnails; screenshot: $shot"
[ "$status" -eq 0 ] && echo "OK: rendered without errors"
exit "$status"
