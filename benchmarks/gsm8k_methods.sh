#!/usr/bin/env bash
# The four methods on the same 20 GSM8K problems with Qwen2.5-Coder-0.5B (issue 4's check).
# Usage: bash benchmarks/gsm8k_methods.sh [OUT_DIR]   (about 40 minutes on a 2-core CPU)
set -euo pipefail
out=${1:-runs/gsm8k20}
common=(--model qwen2.5-coder-0.5b --data gsm8k --limit 20 -M 4 --max-tokens 256 --max-rows 64 --seed 55)
for method in parallel eager-init eager-adapt eager; do
  if [ -f "$out/$method/manifest.json" ]; then resume=(--resume); else resume=(); fi
  eager-mlx eval "${common[@]}" --method "$method" --out "$out/$method" "${resume[@]}"
done
eager-mlx report "$out"/parallel "$out"/eager-init "$out"/eager-adapt "$out"/eager --plot docs/gsm8k20_pass_at_k.png
