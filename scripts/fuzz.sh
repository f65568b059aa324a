#!/usr/bin/env bash
# Fuzzes capmatch's inputs for a number of minutes per target.
#
#   scripts/fuzz.sh [TARGET|all] [MINUTES] [SEED]     e.g. scripts/fuzz.sh image 10
#
# Targets: image, text, checkpoint, index (`capmatch-fuzz list`). Findings land in
# fuzz/findings/: crash-* (a panic), hang-* (an input that ran past 20 s) and abort-* (the
# process died: an allocation failure or an abort; the input it was running is saved). To
# keep one as a regression, fix the bug, then move the file to fuzz/regressions/<target>/:
# `cargo test -p capmatch-fuzz` replays that folder.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-all}"
minutes="${2:-10}"
seed="${3:-$(date +%s)}"
cargo build --release -q -p capmatch-fuzz
bin=target/release/capmatch-fuzz
mkdir -p fuzz/findings
if [ "$target" = all ]; then targets=$($bin list); else targets="$target"; fi
status=0
for t in $targets; do
  echo "== $t: $minutes min, seed $seed" >&2
  set +e
  $bin run "$t" --minutes "$minutes" --seed "$seed" --findings fuzz/findings
  rc=$?
  set -e
  if [ $rc -ne 0 ] && [ $rc -ne 2 ] && [ $rc -ne 3 ] && [ -f "fuzz/findings/current-$t" ]; then
    # Killed by a signal or aborted: the input being run is the finding.
    saved="fuzz/findings/abort-$t-$(sha256sum "fuzz/findings/current-$t" | cut -c1-16)"
    mv "fuzz/findings/current-$t" "$saved"
    echo "[fuzz] $t: the process died (exit $rc) on an input; saved as $saved" >&2
  fi
  [ $rc -eq 0 ] || status=1
done
exit $status
