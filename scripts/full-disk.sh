#!/usr/bin/env bash
# A full disk: indexes into a small tmpfs that fills up, then checks that the run failed
# with one clear error, that the gallery is consistent at its last commit, and that a
# rerun after space is freed completes it with the same contents as an uninterrupted run.
#
#   scripts/full-disk.sh            (needs root for mount; run by .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/full-disk
models=(--clip fixtures/clip/tiny-quickgelu-p32 --captioner fixtures/blip/tiny-a)
cargo build --release -q -p capmatch -p capmatch-engine --example soak_check
bin=target/release/capmatch
mnt="$work/mnt"
cleanup() { umount "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/gallery" "$mnt"
# Enough images that the index outgrows a 160 KiB disk part-way.
for i in 1 2 3 4 5 6; do
  for f in fixtures/images/real/*.png; do cp "$f" "$work/gallery/$i-$(basename "$f")"; done
done
$bin index "$work/gallery" --db "$work/reference.db" "${models[@]}" --batch 4 >/dev/null 2>&1
if ! mount -t tmpfs -o size=160k tmpfs "$mnt"; then
  echo "full-disk: cannot mount a tmpfs (not root?)" >&2
  exit 1
fi
set +e
$bin index "$work/gallery" --db "$mnt/index.db" "${models[@]}" --batch 4 >"$work/full.out" 2>"$work/full.err"
rc=$?
set -e
echo "full-disk: exit $rc with a full disk; its error:" >&2
tail -n 3 "$work/full.err" >&2
if [ $rc -eq 0 ]; then
  echo "full-disk: the run succeeded: make the disk smaller" >&2
  exit 1
fi
grep -qi "space\|full" "$work/full.err" || { echo "full-disk: the error does not say the disk is full" >&2; exit 1; }
grep -qi "panicked" "$work/full.err" && { echo "full-disk: a panic" >&2; exit 1; }
# Consistent at its last commit (when the first commit fit at all).
# A disk full before the first commit leaves an empty SQLite file, which `info` calls "not a
# capmatch index" and the next `index` run takes over.
if [ -f "$mnt/index.db" ] && ! $bin info --db "$mnt/index.db" --check >"$work/check.out" 2>&1; then
  # The two states a write cut short may leave, both by design (see README, "The index on
  # disk"): an empty file before the first commit, or vectors committed for a batch whose
  # catalog commit did not fit, which the next writer removes. Anything else fails.
  if grep -q "not a capmatch index" "$work/check.out"; then
    echo "full-disk: nothing was committed before the disk filled" >&2
  elif [ "$(grep -c '^problem:' "$work/check.out")" = 1 ] && grep -q "^problem: .* vectors belong to no indexed file" "$work/check.out"; then
    echo "full-disk: the last batch's vectors are there without its catalog commit (the next run removes them)" >&2
  else
    cat "$work/check.out" >&2
    exit 1
  fi
fi
mount -o remount,size=64m "$mnt"
$bin index "$work/gallery" --db "$mnt/index.db" "${models[@]}" --batch 4 >/dev/null
target/release/examples/soak_check "$mnt/index.db" "$work/reference.db"
echo "full-disk: ok" >&2
