#!/usr/bin/env bash
# Browser test of `capmatch serve`: indexes the fixture images with the tiny fixture models,
# starts the server on a free loopback port, and drives the page in Debian's Chromium with
# playwright-core (tools/browser/test.mjs): a query image through the file input, a grid
# with captions, a click on a result and a new grid, back/forward, caption and text
# searches, CSV export, an upload. Screenshots: target/browser/*.png. Then stops the
# server with SIGTERM and checks that it exits cleanly.
#
# Needs: Chromium (scripts/install-chromium.sh installs it), Node.js >= 20 and npm (for
# playwright-core, installed locally from tools/browser/package-lock.json), and a release
# build of capmatch (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM:-$(scripts/install-chromium.sh)}"
export CHROMIUM
(cd tools/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
cargo build --release --quiet -p capmatch --bin capmatch
BIN=target/release/capmatch

OUT=target/browser
WORK="$OUT/work"
rm -rf "$WORK"
mkdir -p "$WORK/gallery/cartoon" "$WORK/gallery/photo"
cp fixtures/images/real/cartoon_*.png "$WORK/gallery/cartoon/"
cp fixtures/images/real/photo_*.png "$WORK/gallery/photo/"
MODELS=(--clip fixtures/clip/tiny-quickgelu-p32 --captioner fixtures/blip/tiny-a)
"$BIN" index "$WORK/gallery/cartoon" "$WORK/gallery/photo" --db "$WORK/gallery.db" "${MODELS[@]}" >/dev/null

# An image the gallery does not have, for the upload panel.
UPLOAD=fixtures/images/formats/jpeg_progressive.jpg

TOKEN="browser-test-$(date +%s%N)"
printf '%s\n' "$TOKEN" > "$WORK/token"
chmod 600 "$WORK/token"
"$BIN" serve --db "$WORK/gallery.db" --port 0 --token-file "$WORK/token" "${MODELS[@]}" 2> "$OUT/serve.log" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 600); do
    URL="$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$OUT/serve.log" | head -n1 || true)"
    [ -n "$URL" ] && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$URL" ] || { echo "the server did not say where it listens" >&2; cat "$OUT/serve.log" >&2; exit 1; }

node tools/browser/test.mjs "$URL" fixtures/images/real/cartoon_lemon.png "$UPLOAD" "$TOKEN" "$OUT"

kill -TERM "$SERVER"
wait "$SERVER"
trap - EXIT
echo "browser test passed; screenshot: $OUT/serve.png"
