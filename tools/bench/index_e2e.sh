#!/usr/bin/env bash
# Issue 15, target 3: `capmatch index` end to end on a folder of real image files against the
# same work in Python (tools/reference/index_pipeline.py: Pillow, the transformers processors,
# BLIP `generate`, CLIP `get_text_features` / `get_image_features`), interleaved round by
# round (ours, Python, ours, Python, ...) so that both see the same machine.
#
# usage: tools/bench/index_e2e.sh [IMAGES] [ROUNDS] [DTYPE] [NEW_TOKENS]
#   defaults: 16 images of bench-models/index-images/real-40/photos (the real files the main
#   harness prepares from ../shared/data/fetch-real-images.sh), 2 rounds, bf16, 12 new tokens.
# Needs target/release/capmatch (cargo build --release) and the full-size checkpoints in
# bench-models/ (clip-vit-base-patch32, blip-image-captioning-base). Both sides: batch 8,
# 2 threads, the default prompt "a picture of", exactly NEW_TOKENS new tokens per caption
# (random weights never stop early), wall time of the whole process (start-up, model loading
# and, for Python, its imports included). Prints a Markdown table and the captions' agreement.
set -euo pipefail
cd "$(dirname "$0")/../.."
images=${1:-16}
rounds=${2:-2}
dtype=${3:-bf16}
tokens=${4:-12}
threads=2
models=bench-models
clip=$models/clip-vit-base-patch32
captioner=$models/blip-image-captioning-base
source=$models/index-images/real-40/photos
bin=target/release/capmatch
for need in "$bin" "$clip/config.json" "$captioner/config.json" "$source"; do
    [ -e "$need" ] || { echo "missing $need (see the comment at the top of $0)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/photos"
find "$source" -maxdepth 1 -type f | sort | head -n "$images" | while read -r f; do cp "$f" "$work/photos/"; done
count=$(find "$work/photos" -type f | wc -l)

now() { date +%s.%N; }
ours_secs=()
python_secs=()
python_pipeline=()
for r in $(seq 1 "$rounds"); do
    rm -rf "$work"/ours.db*
    start=$(now)
    RAYON_NUM_THREADS=$threads CANDLE_NUM_THREADS=$threads "$bin" index "$work/photos" --db "$work/ours.db" \
        --clip "$clip" --captioner "$captioner" --batch 8 --dtype "$dtype" \
        --min-new-tokens "$tokens" --max-new-tokens "$tokens" > "$work/ours.log" 2>&1 \
        || { cat "$work/ours.log"; exit 1; }
    ours_secs+=("$(echo "$(now) - $start" | bc -l)")
    start=$(now)
    python3 tools/reference/index_pipeline.py --folder "$work/photos" --clip "$clip" --captioner "$captioner" \
        --dtype "$dtype" --batch 8 --new-tokens "$tokens" --threads "$threads" --out "$work/python.json" \
        > "$work/python.log" 2> "$work/python.err" || { cat "$work/python.err"; exit 1; }
    python_secs+=("$(echo "$(now) - $start" | bc -l)")
    python_pipeline+=("$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["pipeline_secs"])' "$work/python.log")")
    echo "round $r: ours ${ours_secs[-1]} s, python ${python_secs[-1]} s (pipeline ${python_pipeline[-1]} s)" >&2
done

"$bin" search --text "anything" --db "$work/ours.db" -k "$count" --json > "$work/ours-hits.json"
python3 - "$count" "$dtype" "$tokens" "$work/ours-hits.json" "$work/python.json" \
    "${ours_secs[*]}" "${python_secs[*]}" "${python_pipeline[*]}" "$(uptime | sed 's/.*load average: //')" <<'EOF'
import json, os, statistics, sys
count, dtype, tokens, ours_hits, python_rows, ours, python, pipeline, load = sys.argv[1:]
count = int(count)
ours = [float(x) for x in ours.split()]
python = [float(x) for x in python.split()]
pipeline = [float(x) for x in pipeline.split()]
pairs = [p / o for o, p in zip(ours, python)]
ours_caps = {os.path.basename(h["path"]): h["caption"] for h in json.load(open(ours_hits))}
python_caps = {os.path.basename(r["path"]): r["caption"] for r in json.load(open(python_rows))}
same = sum(ours_caps.get(k) == v for k, v in python_caps.items())
med = statistics.median
print(f"{count} real image files, {dtype}, batch 8, {tokens} new tokens, 2 threads, {len(ours)} interleaved rounds; load average at the end {load}\n")
print("| side | wall per round (s) | median | images/s |")
print("|---|---|---:|---:|")
print(f"| `capmatch index` | {', '.join(f'{x:.1f}' for x in ours)} | {med(ours):.1f} | {count / med(ours):.3f} |")
print(f"| Python (transformers), whole process | {', '.join(f'{x:.1f}' for x in python)} | {med(python):.1f} | {count / med(python):.3f} |")
print(f"| Python, pipeline only (no imports, no loading) | {', '.join(f'{x:.1f}' for x in pipeline)} | {med(pipeline):.1f} | {count / med(pipeline):.3f} |")
print(f"\nspeed ratio (Python ÷ capmatch, median of the paired rounds): {med(pairs):.2f}×; "
      f"against Python's pipeline alone: {med([p / o for o, p in zip(ours, pipeline)]):.2f}×")
print(f"captions identical to Python's: {same}/{len(python_caps)} (f32 must give all; bf16 rounds differently)")
EOF
