#!/usr/bin/env bash
# Issue 12's end-to-end check: parallel, eager-init, eager-adapt and eager-adapt + consensus on the same
# GSM8K test problems with Qwen2.5-Coder-0.5B, at the same --max-rows (a laptop's budget).
# Usage: bash benchmarks/gsm8k_methods.sh [OUT_DIR] [LIMIT]   (a few hours on a 2-core CPU; resumable)
# Then:  python benchmarks/e2e.py OUT_DIR
set -euo pipefail
out=${1:-runs/gsm8k30}
limit=${2:-30}
bin=$(dirname "$0")/../.venv/bin
common=(--model qwen2.5-coder-0.5b --data gsm8k --limit "$limit" -M 8 --max-tokens 512 --temperature 0.6
        --top-p 0.95 --max-rows 16 --seed 55)
run() {  # run NAME ARGS...
  local name=$1; shift
  local resume=()
  [ -f "$out/$name/manifest.json" ] && resume=(--resume)
  "$bin/eager-mlx" eval "${common[@]}" "$@" --out "$out/$name" "${resume[@]}"
}
run parallel --method parallel
run eager-init --method eager-init
run eager-adapt --method eager-adapt
run eager-adapt+consensus --method eager-adapt --consensus beta
"$bin/eager-mlx" report "$out"/parallel "$out"/eager-init "$out"/eager-adapt "$out"/eager-adapt+consensus \
    --plot docs/gsm8k_methods_pass_at_k.png
