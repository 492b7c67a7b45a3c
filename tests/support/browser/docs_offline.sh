#!/usr/bin/env bash
# Runs inside a fresh network namespace (unshare -n): only loopback exists, so the docs page must
# render from the service's own assets. Starts the service (embedded Redis), then headless Chromium
# dumps the rendered DOM and takes a screenshot. Usage: docs_offline.sh OUT_DIR PYTHON
set -euo pipefail
out=$1 python=$2
ip link set lo up
export XMHASH_DATA_DIR="$out/data" XMHASH_PORT=8321 XMHASH_API_KEY=browser-test XMHASH_INDEX_NAME=browser XMHASH_DEMO_CORPUS=false
"$python" -m service > "$out/service.log" 2>&1 &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  "$python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8321/healthz', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$out/profile" --virtual-time-budget=20000)
chromium "${flags[@]}" --dump-dom http://127.0.0.1:8321/docs > "$out/docs.html" 2> "$out/chromium.log"
chromium "${flags[@]}" --window-size=1280,1600 --screenshot="$out/docs.png" http://127.0.0.1:8321/docs \
  >> "$out/chromium.log" 2>&1
