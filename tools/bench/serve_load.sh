#!/usr/bin/env bash
# Load benchmark of `capmatch serve`, in one command:
#
#   tools/bench/serve_load.sh            # then read the section it writes into BENCHMARKS.md
#
# A gallery of N synthetic images (random unit vectors and made-up captions written through
# the store's APIs, bound to a full-size random-weight CLIP ViT-B/32 and BLIP base), served
# with uploads enabled; an index job adds real images (Debian's tuxpaint stamps) for the
# whole run. Meanwhile `oha` (installed with cargo into bench-models/tools) drives:
#   1. text queries, CLIENTS concurrent clients, DURATION;
#   2. image queries (a real photo, multipart), CLIENTS clients, DURATION;
#   3. image queries, one client, DURATION (the baseline of the batching gain).
# Results: bench-models/serve-load/*.json (oha) and a section of BENCHMARKS.md.
#
# Environment: N (100000), CLIENTS (16), DURATION (60s), PYTHON (.venv/bin/python if present,
# else python3: needs `pip install torch transformers` once, to make the checkpoints),
# CAPTIONER (the random BLIP base), NO_WRITE=1 to leave BENCHMARKS.md alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-100000}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-60s}
ROOT=bench-models
WORK=$ROOT/serve-load
mkdir -p "$WORK" "$ROOT/tools"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
say() { echo "[serve-load] $*" >&2; }

# --- Tools and models (made once, kept in bench-models/).
OHA=$ROOT/tools/bin/oha
if [ ! -x "$OHA" ]; then
    say "installing oha into $ROOT/tools"
    # native-tls (the system's OpenSSL): oha's default rustls pulls in aws-lc-sys, whose
    # build needs cmake and a C toolchain setup we do not otherwise require.
    cargo install oha --locked --quiet --no-default-features --features native-tls --root "$ROOT/tools"
fi
checkpoint() {
    local arch=$1 dir=$ROOT/$1
    if [ ! -f "$dir/config.json" ]; then
        say "making a random-weight $arch checkpoint (python: $PYTHON)"
        rm -rf "$ROOT/.$arch.partial"
        "$PYTHON" tools/reference/make_random_checkpoint.py "$arch" "$ROOT/.$arch.partial" >&2
        mv "$ROOT/.$arch.partial" "$dir"
    fi
    echo "$dir"
}
CLIP=$(checkpoint clip-vit-base-patch32)
CAPTIONER=${CAPTIONER:-$(checkpoint blip-image-captioning-base)}
IMAGES=$ROOT/real-images/tuxpaint
if [ ! -d "$IMAGES" ]; then
    say "fetching real images"
    ../shared/data/fetch-real-images.sh "$ROOT/real-images" >&2
fi

cargo build --release --quiet -p capmatch --bin capmatch
cargo build --release --quiet -p capmatch-server --example synthetic_gallery
BIN=target/release/capmatch

# --- The gallery: made once, copied fresh for each run (the index job adds to the copy).
PRISTINE=$WORK/pristine-$N
if [ ! -f "$PRISTINE/gallery.db" ]; then
    say "writing a $N-image synthetic gallery"
    rm -rf "$PRISTINE" && mkdir -p "$PRISTINE.partial"
    target/release/examples/synthetic_gallery --db "$PRISTINE.partial/gallery.db" --images "$N" --clip "$CLIP" --captioner "$CAPTIONER" >&2
    mv "$PRISTINE.partial" "$PRISTINE"
fi
RUN=$WORK/run
rm -rf "$RUN" && mkdir -p "$RUN"
cp -r "$PRISTINE/." "$RUN/"
# The index job's folder: every real image, under a root the server allows.
mkdir -p "$RUN/incoming"
cp -r "$IMAGES/." "$RUN/incoming/"
# The query image: a real photo, as a multipart body (oha sends a body file as is).
QUERY=$(find "$IMAGES" -name '*.png' -size +20k | sort | head -n1)
BOUNDARY=capmatchloadtestboundary
{
    printf -- '--%s\r\nContent-Disposition: form-data; name="image"; filename="query.png"\r\nContent-Type: image/png\r\n\r\n' "$BOUNDARY"
    cat "$QUERY"
    printf -- '\r\n--%s\r\nContent-Disposition: form-data; name="k"\r\n\r\n20\r\n--%s--\r\n' "$BOUNDARY" "$BOUNDARY"
} > "$RUN/image-query.body"
TOKEN="load-$(date +%s%N)"
printf '%s\n' "$TOKEN" > "$RUN/token"

# --- The server.
"$BIN" serve --db "$RUN/gallery.db" --port 0 --token-file "$RUN/token" --allow-index-root "$RUN/incoming" \
    --clip "$CLIP" --captioner "$CAPTIONER" 2> "$RUN/serve.log" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 3000); do
    URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$RUN/serve.log" | head -n1 || true)
    [ -n "$URL" ] && break
    kill -0 "$SERVER" || { cat "$RUN/serve.log" >&2; exit 1; }
    sleep 0.1
done
get() { "$PYTHON" -c 'import sys, urllib.request as u; r = u.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]}); print(u.urlopen(r).read().decode())' "$@"; }
until get "$URL/healthz" "$TOKEN" >/dev/null 2>&1; do
    kill -0 "$SERVER" || { cat "$RUN/serve.log" >&2; exit 1; }
    sleep 0.5
done
say "server ready at $URL"
JOB=$("$PYTHON" - "$URL" "$TOKEN" "$(realpath "$RUN/incoming")" <<'PY'
import json, sys, urllib.request as u
url, token, path = sys.argv[1:]
r = u.Request(url + "/api/index", data=json.dumps({"path": path, "domain": "incoming"}).encode(),
              headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
print(json.load(u.urlopen(r))["id"])
PY
)
# Let the job get past planning and into the models before measuring.
sleep 5

oha() {
    local name=$1; shift
    say "$name"
    "$OHA" --no-tui --output-format json --wait-ongoing-requests-after-deadline -z "$DURATION" "$@" > "$WORK/$name.json"
    get "$URL/api/jobs/$JOB" "$TOKEN" > "$WORK/$name.job.json"
    get "$URL/metrics" "$TOKEN" > "$WORK/$name.metrics.txt"
}
# Warm-up (the first image batch sizes the kernels' buffers), not measured.
"$OHA" --no-tui -n 8 -c 4 -m POST -T "multipart/form-data; boundary=$BOUNDARY" -D "$RUN/image-query.body" "$URL/api/search" > /dev/null
get "$URL/api/jobs/$JOB" "$TOKEN" > "$WORK/start.job.json"
get "$URL/metrics" "$TOKEN" > "$WORK/start.metrics.txt"
# The machine's load besides this benchmark, for the record (a shared machine is noisy).
cut -d' ' -f1-3 /proc/loadavg > "$WORK/start.loadavg"
oha text-c$CLIENTS -c "$CLIENTS" -m POST -T application/json -d '{"text": "a photo of a red bicycle", "k": 20}' "$URL/api/search"
oha image-c$CLIENTS -c "$CLIENTS" -m POST -T "multipart/form-data; boundary=$BOUNDARY" -D "$RUN/image-query.body" "$URL/api/search"
oha image-c1 -c 1 -m POST -T "multipart/form-data; boundary=$BOUNDARY" -D "$RUN/image-query.body" "$URL/api/search"
cut -d' ' -f1-3 /proc/loadavg > "$WORK/end.loadavg"

kill -TERM "$SERVER"
wait "$SERVER" || true
trap - EXIT

"$PYTHON" tools/bench/serve_load_report.py "$WORK" "$CLIENTS" "$DURATION" "$N" "$(nproc)" ${NO_WRITE:+--no-write}
