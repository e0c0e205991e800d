#!/usr/bin/env bash
# merge_table.sh — the expert-reduction table of docs/merge.md: every merge
# method at 8->6 and 8->4 (and every router variant of the default method),
# and --budget totals spread over the layers by sensitivity,
# each output evaluated on the held-out text against the original model
# (gptq protocol, ctx 256): perplexity, KL, top-1 agreement, size on disk,
# expert parameters. Prints a markdown table on stdout.
#
#   bench/merge_table.sh [BIN] [MODEL] [CALIB_TOKENS]
set -eu
BIN=${1:-${MT_BIN:-build/cli/moetool}}
MODEL=${2:-${MT_MODEL_DIR:-models/kjv-mixtral-15m}}
CT=${3:-16384}
TEXT=$MODEL/data/test.txt
CALIB=$MODEL/data/train.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d' + sys.argv[2]))" "$@"; }

row() { # label K merge-args...
  local label=$1 k=$2; shift 2
  "$BIN" merge "$MODEL" -o "$T/out" --experts "$k" --calib "$CALIB" --calib-tokens "$CT" "$@" --json >"$T/m.json"
  "$BIN" eval "$T/out" --text "$TEXT" --ref "$MODEL" --json >"$T/e.json"
  printf '| %s | 8→%s | %.2f | %.4f | %.1f %% | %.1f MiB | %s | %.1f s / %.0f MiB |\n' "$label" "$k" \
    "$(jget "$T/e.json" "['ppl']")" "$(jget "$T/e.json" "['kl_mean']")" \
    "$(jget "$T/e.json" "['top1_agree'] * 100")" "$(jget "$T/e.json" "['size']['file_bytes'] / 1048576")" \
    "$(jget "$T/e.json" "['size']['expert_params']")" "$(jget "$T/m.json" "['seconds']")" \
    "$(jget "$T/m.json" "['peak_rss_mib']")"
  rm -rf "$T/out"
}

brow() { # label BUDGET merge-args...: per-layer counts from --budget, shown in the experts column
  local label=$1 b=$2; shift 2
  "$BIN" merge "$MODEL" -o "$T/out" --budget "$b" --calib "$CALIB" --calib-tokens "$CT" "$@" --json >"$T/m.json"
  "$BIN" eval "$T/out" --text "$TEXT" --ref "$MODEL" --json >"$T/e.json"
  printf '| %s | 8→%s | %.2f | %.4f | %.1f %% | %.1f MiB | %s | %.1f s / %.0f MiB |\n' "$label" \
    "$(jget "$T/m.json" "['layer_experts']" | tr -d ' []' | tr , /)" \
    "$(jget "$T/e.json" "['ppl']")" "$(jget "$T/e.json" "['kl_mean']")" \
    "$(jget "$T/e.json" "['top1_agree'] * 100")" "$(jget "$T/e.json" "['size']['file_bytes'] / 1048576")" \
    "$(jget "$T/e.json" "['size']['expert_params']")" "$(jget "$T/m.json" "['seconds']")" \
    "$(jget "$T/m.json" "['peak_rss_mib']")"
  rm -rf "$T/out"
}

"$BIN" eval "$MODEL" --text "$TEXT" --json >"$T/base.json"
echo "| method | experts | ppl | KL vs original | top-1 agree | size | expert params | merge time / peak RSS |"
echo "|---|---|---|---|---|---|---|---|"
printf '| original (bf16) | 8 | %.2f | 0 | 100 %% | %.1f MiB | %s | |\n' "$(jget "$T/base.json" "['ppl']")" \
  "$(jget "$T/base.json" "['size']['file_bytes'] / 1048576")" "$(jget "$T/base.json" "['size']['expert_params']")"
for k in 6 4; do
  row "prune (most used)" "$k" --method prune
  row "average (uniform, anchor rows)" "$k" --method average --router anchor
  row "reap (saliency prune)" "$k" --method reap
  row "frequency, router fit" "$k" --method frequency
  row "mc-smoe, router fit" "$k" --method mc-smoe
  row "hc-smoe, router fit" "$k" --method hc-smoe
  for r in anchor average; do
    row "reap-merge, router $r" "$k" --method reap-merge --router "$r"
  done
  row "reap-merge, router fit (softmax regression, 300 steps)" "$k" --method reap-merge --router-steps 300
  row "**reap-merge, router fit (default)**" "$k"
  row "naee (search over kept sets)" "$k" --method naee
done
k=4
row "hc-smoe, router fit (softmax regression, 300 steps)" "$k" --method hc-smoe --router-steps 300
# --budget: the same total as 8->6 / 8->4, spread over the layers by sensitivity
for b in 24 16; do
  brow "naee, budget $b" "$b" --method naee
  brow "reap-merge, router fit, budget $b" "$b"
done
