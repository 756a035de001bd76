#!/usr/bin/env bash
# Render a `frugal report --html` page to a PNG with headless Chromium, to see
# (or test) that it renders: scripts/report-screenshot.sh REPORT.html OUT.png [WIDTHxHEIGHT]
# Needs Chromium (Debian: apt-get install -y chromium). The page fetches
# nothing, so this works offline. Set CHROMIUM to use another binary.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]  (default 1280x2000)" >&2
  exit 2
fi
html=$1
out=$2
size=${3:-1280x2000}
[ -f "$html" ] || { echo "$0: no such file: $html" >&2; exit 1; }
browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
  done
fi
[ -n "$browser" ] || { echo "$0: Chromium not found (apt-get install -y chromium)" >&2; exit 1; }
abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
# A private profile, so parallel runs and a user's browser do not interfere.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$abs_out"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --no-first-run --no-default-browser-check --user-data-dir="$profile" \
  --window-size="${size/x/,}" --screenshot="$abs_out" "file://$abs_html" \
  >"$profile/log" 2>&1 || { cat "$profile/log" >&2; exit 1; }
[ -s "$abs_out" ] || { echo "$0: Chromium wrote no screenshot" >&2; cat "$profile/log" >&2; exit 1; }
echo "$abs_out"
