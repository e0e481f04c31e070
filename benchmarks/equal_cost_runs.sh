#!/usr/bin/env bash
# Issue 19's end-to-end runs: parallel sampling and every adaptive method on the same problems, all through one run
# store (runs shared between methods are generated once). Qwen2.5-Coder-0.5B, M=4, 384 tokens, T=0.6, top-p 0.95,
# 16 rows, seed 55 (M=8 / 512 tokens does not fit two CPU cores). Each run is resumed if its folder exists.
# Usage: bash benchmarks/equal_cost_runs.sh DATA OUT_DIR STORE_DIR [NAME ...]   (hours on a 2-core CPU)
# Another model / length: MODEL=smollm2-135m MAX_TOKENS=128 bash benchmarks/equal_cost_runs.sh ...
# THRESHOLD=2.4 sets theta for every run (default: the preset's, or its eval theta for the eval method).
# Then:  python benchmarks/equal_cost.py OUT_DIR
set -u
data=$1 out=$2 store=$3
shift 3
bin=$(dirname "$0")/../.venv/bin
common=(--model "${MODEL:-qwen2.5-coder-0.5b}" --data "$data" --limit 100 -M 4 --max-tokens "${MAX_TOKENS:-384}"
        --temperature 0.6 --top-p 0.95
        --max-rows 16 --seed 55 --store "$store" ${THRESHOLD:+--threshold "$THRESHOLD"})
declare -A args=(
  [parallel]="--method parallel"
  [eager-init]="--method eager-init"
  [parallel-adapt-seq]="--method parallel-adapt --policy sequential"
  [parallel-adapt-disagree]="--method parallel-adapt --policy disagree"
  [eager-adapt-seq]="--method eager-adapt --policy sequential"
  [eager-adapt-hitm]="--method eager-adapt --policy hit-m"
  [eager-adapt-disagree]="--method eager-adapt --policy disagree"
  [eager-adapt-rank]="--method eager-adapt --policy rank"
  [eager]="--method eager"
  [eager-adapt-seq-half]="--method eager-adapt --policy sequential --budget 0.5"
  [parallel-adapt-seq-half]="--method parallel-adapt --policy sequential --budget 0.5"
  [parallel-adapt-fewest]="--method parallel-adapt --policy fewest"
  [eager-adapt-seq-keep]="--method eager-adapt --policy sequential --branch-rule keep"
  [eager-adapt-seq-sample]="--method eager-adapt --policy sequential --branch-rule sample"
  [eager-init-sample]="--method eager-init --branch-rule sample"
  [eager-init-keep]="--method eager-init --branch-rule keep"
  [eager-parallel-seq]="--method eager-parallel --policy sequential"
  [eager-parallel-disagree]="--method eager-parallel --policy disagree"
  [eager-parallel-seq-half]="--method eager-parallel --policy sequential --budget 0.5"
  [eager-parallel-fewest]="--method eager-parallel --policy fewest"
  [eager-parallel-fewest-half]="--method eager-parallel --policy fewest --budget 0.5"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(parallel eager-init parallel-adapt-seq eager-adapt-seq eager-adapt-hitm
                                  eager-adapt-disagree eager-adapt-rank eager eager-adapt-seq-half
                                  parallel-adapt-seq-half parallel-adapt-disagree eager-init-sample eager-init-keep
                                  eager-parallel-seq eager-parallel-disagree eager-parallel-seq-half
                                  eager-parallel-fewest eager-parallel-fewest-half)
for name in "${names[@]}"; do
  [ -n "${args[$name]:-}" ] || { echo "unknown run name $name" >&2; exit 2; }
  resume=()
  [ -f "$out/$name/manifest.json" ] && resume=(--resume)
  echo "eager-mlx eval ${common[*]} ${args[$name]} --out $out/$name ${resume[*]}"
  "$bin/eager-mlx" eval "${common[@]}" ${args[$name]} --out "$out/$name" "${resume[@]}" || exit $?
done
