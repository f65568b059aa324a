#!/usr/bin/env bash
# Model speed of an older tree against this one, interleaved on one machine (issue 10: "no
# model row more than 3 % slower"):
#
#   tools/bench/compare_trees.sh ab16101        # the tree before the engine and the batch-invariant kernels
#
# Builds OLD's `clip_speed` example and `capmatch` binary in a worktree under target/compare/
# (its own target directory: the first build takes about as long as a clean build), then runs
# ROUNDS rounds of old, new, new, old: CLIP ViT-B/32 image (f32 batch 1 and 8, bf16 batch 8)
# and text (f32, bf16; batch 32 x 20 tokens) with `clip_speed`, and `capmatch caption` of 8 real
# images with BLIP base (f32, exactly 20 new tokens). Prints the medians and new/old.
# Needs the full-size random checkpoints and the real images of bench-models/ (made by
# tools/bench/serve_load.sh or `cargo run --release -p capmatch-bench`). Run on a quiet machine.
# OLD_BUILT=DIR uses OLD's release directory already built there (DIR/examples/clip_speed,
# DIR/capmatch) instead of building it. ROUNDS (2), REPS (7).
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD_REV=${1:?usage: tools/bench/compare_trees.sh OLD_REV}
ROUNDS=${ROUNDS:-2}
REPS=${REPS:-7}
CLIP=bench-models/clip-vit-base-patch32
BLIP=bench-models/blip-image-captioning-base
for need in "$CLIP/config.json" "$BLIP/config.json" bench-models/real-images/tuxpaint; do
    [ -e "$need" ] || { echo "missing $need: make the bench models first (see the header)" >&2; exit 1; }
done
WORK=target/compare
mkdir -p "$WORK"
if [ -n "${OLD_BUILT:-}" ]; then
    OLD=$OLD_BUILT
else
    TREE=$WORK/$OLD_REV
    [ -d "$TREE" ] || git worktree add --detach "$TREE" "$OLD_REV" >&2
    (cd "$TREE" && CARGO_TARGET_DIR=../target cargo build --release --quiet -p capmatch-models --example clip_speed -p capmatch --bin capmatch)
    OLD=$WORK/target/release
fi
cargo build --release --quiet --workspace --example clip_speed --bin capmatch
NEW=target/release
mapfile -t IMAGES < <(find bench-models/real-images/tuxpaint -name '*.png' | sort | head -n 8)
RESULTS=$WORK/results-$OLD_REV.txt
: > "$RESULTS"
speed() { # dir dtype mode batch
    "$1/examples/clip_speed" "$CLIP" "$2" "$REPS" "$3" "$4" 2>&1 | grep -o '[0-9.]* ms/[a-z]*' | head -n1 | cut -d' ' -f1
}
caption() { # dir
    local t0 t1
    t0=$(date +%s.%N)
    "$1/capmatch" caption --captioner "$BLIP" --dtype f32 --min-new-tokens 20 --max-new-tokens 20 "${IMAGES[@]}" > /dev/null
    t1=$(date +%s.%N)
    python3 -c "print(f'{($t1 - $t0) * 1000:.0f}')"
}
for round in $(seq 1 "$ROUNDS"); do
    for side in old new new old; do
        dir=$OLD; [ "$side" = new ] && dir=$NEW
        for spec in "f32 image 1" "f32 image 8" "f32 text 8" "bf16 image 8" "bf16 text 8"; do
            printf '%s\t%s\t%s\n' "$side" "clip $spec" "$(speed "$dir" $spec)" | tee -a "$RESULTS" >&2
        done
        printf '%s\t%s\t%s\n' "$side" "blip caption 8 images" "$(caption "$dir")" | tee -a "$RESULTS" >&2
    done
done
python3 - "$RESULTS" "$OLD_REV" "$(git rev-parse --short HEAD)" <<'PY'
import collections, statistics, sys
path, old, new = sys.argv[1:]
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(path):
    side, name, value = line.rstrip("\n").split("\t")
    rows[name][side].append(float(value))
print(f"| workload (ms per image, caption, or whole run) | {old} | {new} | new / old |")
print("| --- | ---: | ---: | ---: |")
for name, sides in rows.items():
    o, n = statistics.median(sides["old"]), statistics.median(sides["new"])
    print(f"| {name} | {o:.1f} | {n:.1f} | {n / o:.3f} |")
PY
