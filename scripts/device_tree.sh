#!/usr/bin/env bash
# The working tree a device call uploads (tracked files and untracked ones git does not ignore, 64 MiB at most) made
# small enough, and put back. Run here, between device calls (results/README.md, "Plan for the next 30 minutes"):
#   bash scripts/device_tree.sh slim          # results/ aside, but for the teacher's committed screen and full sets
#                                             # and issue 34's runs (what gpu_campaign.sh's steps read from it)
#   bash scripts/device_tree.sh slim-assets   # the same and mohawk/assets aside too: the calls that only carry the
#                                             # wheels or the GGUF's parts (part-a, part-b)
#   bash scripts/device_tree.sh restore       # everything back; refused if the slim tree holds a file the stash lacks
#   bash scripts/device_tree.sh size          # the bytes a call would upload now
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=$(realpath -m "${STASH:-../.device-stash}")
# what the campaign reads from results/: the teacher's committed screen and full sets (recall), and issue 34's
# runs made so far (experiments/run_all.py queues only those missing there)
KEEP=(results/recall/runs/screen/teacher results/recall/runs/full/teacher results/experiments/10m)

size() {
  # tracked files still in the tree (a stashed one is listed but absent) and untracked ones git does not ignore
  { git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}'
}

case "${1:-}" in
  slim | slim-assets)
    [ ! -e "$STASH" ] || { echo "$STASH exists: restore first"; exit 2; }
    mkdir -p "$STASH"
    mv results "$STASH/results"
    for d in "${KEEP[@]}"; do
      if [ -e "$STASH/$d" ]; then mkdir -p "$(dirname "$d")" && cp -rp "$STASH/$d" "$d"; fi
    done
    if [ "$1" = slim-assets ]; then mv mohawk/assets "$STASH/assets"; fi
    echo "upload now $(size) bytes (limit $((64 * 1024 * 1024)))" ;;
  restore)
    [ -d "$STASH/results" ] || { echo "nothing stashed in $STASH"; exit 2; }
    extra=$(cd results && find . -type f | while read -r f; do [ -e "$STASH/results/$f" ] || echo "$f"; done)
    [ -z "$extra" ] || { echo "results/ holds files the stash lacks, move them first: $extra"; exit 2; }
    rm -rf results && mv "$STASH/results" results
    if [ -d "$STASH/assets" ]; then mv "$STASH/assets" mohawk/assets; fi
    rmdir "$STASH" && echo "restored; upload $(size) bytes" ;;
  size) size ;;
  *) echo "usage: $0 slim | slim-assets | restore | size"; exit 2 ;;
esac
