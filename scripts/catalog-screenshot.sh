#!/usr/bin/env bash
# docs/img/catalog.png: a bundle page of `vmt-hub serve`'s catalog, in headless chromium.
# A tiny trained bundle (synthetic scenes, random:tiny), one derived from it, a signature.
#   scripts/catalog-screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/img/catalog.png}
cargo build --quiet
vmt=$PWD/target/debug/vmt-hub
tmp=$(mktemp -d)
trap 'kill $serve 2>/dev/null || true; rm -rf "$tmp"' EXIT
export VMT_HOME=$tmp/reg COSIGN_PASSWORD=screenshot
"$vmt" data synth --out "$tmp/data" --count 8 --size 64 >/dev/null
"$vmt" train --data "$tmp/data" --tasks semseg,sal,normals --backbone random:tiny --steps 4 \
  --batch 2 --image-size 64 --run-dir "$tmp/run" --tag pascal/vmt:v1 >/dev/null
"$vmt" drop-task pascal/vmt:v1 --task normals --tag pascal/vmt:v2 >/dev/null
"$vmt" key generate --out "$tmp/team" >/dev/null
"$vmt" sign pascal/vmt:v2 --key "$tmp/team.key" --identity registry.example:5000/pascal/vmt >/dev/null
"$vmt" serve --addr 127.0.0.1:5079 > "$tmp/serve.log" 2>&1 &
serve=$!
sleep 1
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$tmp/profile" --hide-scrollbars \
  --window-size=1100,1020 --screenshot="$out" http://127.0.0.1:5079/ui/bundle/pascal/vmt:v2 2>/dev/null
echo "wrote $out"
