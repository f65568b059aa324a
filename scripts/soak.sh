#!/usr/bin/env bash
# Soak test of crash safety: SIGKILLs at random moments of `capmatch index`, then checks.
#
#   scripts/soak.sh [KILLS] [IMAGES]        default: 100 kills over 300 real images
#
# The images are the first IMAGES PNG/SVG files of ../shared/data/fetch-real-images.sh's
# folder (beside the project's checkout; fetched into target/soak/real once), or the
# repository's own fixture images when that cannot run. The tiny fixture models keep each
# run short, so kills land in every phase: planning, decoding, captioning, embedding, the
# catalog commit and the vector commit. After the kills, one run completes the gallery, and
# `soak_check` compares it with an uninterrupted run of the same files: integrity checks
# clean, every image exactly once, no file both indexed and skipped, identical captions and
# bit-identical vectors.
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-100}"
count="${2:-300}"
work=target/soak
models=(--clip fixtures/clip/tiny-quickgelu-p32 --captioner fixtures/blip/tiny-a)
cargo build --release -q -p capmatch -p capmatch-engine --example soak_check
bin=target/release/capmatch

if [ ! -d "$work/real/tuxpaint" ]; then
  bash ../shared/data/fetch-real-images.sh "$work/real" >/dev/null 2>&1 || rm -rf "$work/real"
fi
rm -rf "$work/images" "$work"/*.db "$work"/*.db.*
mkdir -p "$work/images/all" "$work/images/gallery"
if [ -d "$work/real/tuxpaint" ]; then
  # (No `| head`: under pipefail its early exit would fail the pipeline with SIGPIPE.)
  mapfile -t real < <(find "$work/real/tuxpaint" -type f \( -name '*.png' -o -name '*.svg' \) | sort)
  for f in "${real[@]:0:$count}"; do cp "$f" "$work/images/all/$(echo "$f" | md5sum | cut -c1-8)-$(basename "$f")"; done
else
  echo "soak: no real image folder; using the fixture images" >&2
  cp fixtures/images/real/*.png fixtures/images/formats/*.{png,jpg,gif,bmp,webp,tif,svg} "$work/images/all/" 2>/dev/null || true
fi
# Files no decoder accepts, so the skipped list is exercised too.
printf 'not an image' > "$work/images/all/broken.png"
head -c 3000 fixtures/images/real/photo_lemon.png > "$work/images/all/truncated.png"
mapfile -t all < <(find "$work/images/all" -type f | sort)
echo "soak: ${#all[@]} files, $kills kills" >&2

# Time of a whole run over every file, so kills are spread over all of it.
start=$(date +%s%N)
$bin index "$work/images/all" --db "$work/timing.db" "${models[@]}" --batch 4 >/dev/null 2>&1
full_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "soak: an uninterrupted run over every file takes $full_ms ms" >&2

# The gallery grows in ten steps while it is being killed, so that runs keep finding new
# work (a gallery already complete would only be killed while planning).
add() { [ -e "$work/images/gallery/$(basename "$1")" ] || cp "$1" "$work/images/gallery/"; }
RANDOM=42
killed=0
step=$(( (kills + 9) / 10 ))
for i in $(seq 1 "$kills"); do
  if [ $(( (i - 1) % step )) -eq 0 ]; then
    part=$(( (i - 1) / step + 1 ))
    upto=$(( ${#all[@]} * part / 10 ))
    for f in "${all[@]:0:$upto}"; do add "$f"; done
  fi
  $bin index "$work/images/gallery" --db "$work/killed.db" "${models[@]}" --batch 4 >/dev/null 2>&1 &
  pid=$!
  # A random moment of a run that indexes about a tenth of the files (each step adds a
  # tenth): start-up plus a tenth of a full run.
  sleep "$(awk -v r=$RANDOM -v t="$full_ms" 'BEGIN { printf "%.3f", (r / 32767) * (t / 10 + 300) / 1000 }')"
  # (A run that already finished is a zombie until waited for: not counted as killed.)
  if [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && kill -9 "$pid" 2>/dev/null; then
    killed=$((killed + 1))
  fi
  wait "$pid" 2>/dev/null || true
  if [ $((i % 25)) -eq 0 ]; then
    $bin info --db "$work/killed.db" --check >/dev/null 2>&1 || { echo "soak: info --check failed after kill $i" >&2; $bin info --db "$work/killed.db" --check; exit 1; }
  fi
done
echo "soak: $killed of $kills runs were killed mid-way" >&2
for f in "${all[@]}"; do add "$f"; done
$bin index "$work/images/gallery" --db "$work/reference.db" "${models[@]}" --batch 4 >/dev/null 2>&1
$bin index "$work/images/gallery" --db "$work/killed.db" "${models[@]}" --batch 4 >/dev/null 2>&1
target/release/examples/soak_check "$work/killed.db" "$work/reference.db"
