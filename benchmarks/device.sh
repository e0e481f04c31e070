#!/usr/bin/env bash
# The performance table on a machine where mlx is not installed and nothing can be downloaded
# (the NVIDIA device machine): installs mlx + mlx-lm + a backend from carried files, then runs
# benchmarks/bench.py from this source tree.
#
# Usage: benchmarks/device.sh PARTS_DIR [--full] [--cpu-ok]
#   PARTS_DIR holds
#     mlx-<ver>-cp<XY>-*.whl      the mlx Python bindings (cpXY = this Python's version)
#     mlx_lm-<ver>-*.whl          mlx-lm
#     <name>.part.aa, .ab, ...    an xz tar, split, of a backend wheel's unpacked contents: the mlx/ tree
#                                 with lib/libmlx.so (+ include/) and its .libs folder (mlx_cuda_13)
#   --full     after the quick table, the full one (with --long) if the time budget leaves room
#   --cpu-ok   do not require a GPU (to test this script on a CPU machine with a CPU backend tar)
#   --check-only  the fork-correctness check only (no tables)
# Environment: OUT (output folder, default ./device-out), TARGET (install folder, default
#   /tmp/eager-mlx-device; reused when already complete), PYTHON (default python3),
#   BUDGET (seconds for the whole script, default 540), CHECK_ARGS (options for gpu_check.py),
#   CHECK_TIMEOUT (seconds for it, default 150).
# Writes under $OUT: install.log, env.txt, gpu_check.log (fork-correctness on this device),
#   quick.{log,md,json} and, with --full, full.{log,md,json}.
set -euo pipefail

die() { echo "device.sh: $*" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS=${1:-}
[ -n "$PARTS" ] || die "usage: benchmarks/device.sh PARTS_DIR [--full] [--cpu-ok]"
[ -d "$PARTS" ] || die "no such folder: $PARTS"
PARTS=$(cd "$PARTS" && pwd)
shift
FULL=0; CPU_OK=0; CHECK_ONLY=0
for a in "$@"; do
  case "$a" in
    --full) FULL=1 ;;
    --cpu-ok) CPU_OK=1 ;;
    --check-only) CHECK_ONLY=1 ;;
    *) die "unknown option: $a" ;;
  esac
done
OUT=${OUT:-$REPO/device-out}
TARGET=${TARGET:-/tmp/eager-mlx-device}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
START=$(date +%s)
mkdir -p "$OUT"
command -v "$PY" >/dev/null || die "no Python: $PY"

# ---- the carried files (a one-line error naming what is missing, before any work)
shopt -s nullglob
mlx_whl=("$PARTS"/mlx-[0-9]*.whl); lm_whl=("$PARTS"/mlx_lm-*.whl); parts=("$PARTS"/*.part.??)
[ ${#mlx_whl[@]} -eq 1 ] || die "need exactly one mlx-*.whl in $PARTS, found ${#mlx_whl[@]}"
[ ${#lm_whl[@]} -eq 1 ] || die "need exactly one mlx_lm-*.whl in $PARTS, found ${#lm_whl[@]}"
[ ${#parts[@]} -ge 1 ] || die "no backend parts (*.part.aa, *.part.ab, ...) in $PARTS"
tag=$(basename "${mlx_whl[0]}" | sed -E 's/^mlx-[^-]+-(cp[0-9]+)-.*/\1/')
pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
[ "$tag" = "$pytag" ] || die "$(basename "${mlx_whl[0]}") is for $tag but $PY is $pytag (set PYTHON=)"

# ---- install into TARGET (skipped when the same files were installed there before)
stamp=$(ls -l "${mlx_whl[0]}" "${lm_whl[0]}" "${parts[@]}" | awk '{print $5, $NF}' | md5sum | cut -c1-16)
if [ -f "$TARGET/.eager-device-$stamp" ]; then
  echo "device.sh: reusing $TARGET" | tee "$OUT/install.log"
else
  rm -rf "$TARGET" && mkdir -p "$TARGET"
  {
    echo "== wheels"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install --no-index --no-deps --no-compile --target "$TARGET" "${mlx_whl[0]}" "${lm_whl[0]}"
    else  # a wheel is a zip: unpacking it is an install for a --target folder
      for w in "${mlx_whl[0]}" "${lm_whl[0]}"; do "$PY" -m zipfile -e "$w" "$TARGET"; done
    fi
    echo "== backend: ${parts[*]}"
    cat "${parts[@]}" | xz -dc | tar -x -C "$TARGET"
  } >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log" >&2; die "install failed (see $OUT/install.log)"; }
  [ -f "$TARGET/mlx/lib/libmlx.so" ] || die "the backend parts have no mlx/lib/libmlx.so"
  touch "$TARGET/.eager-device-$stamp"
fi

# ---- libraries: the backend's RPATH looks for nvidia/*/lib beside the install; point it at pip's CUDA
nv_dirs=$("$PY" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null || true)
libpath="$TARGET/mlx/lib"
for d in $nv_dirs; do
  for lib in "$d"/*/lib; do [ -d "$lib" ] && libpath="$libpath:$lib"; done
done
for libs in "$TARGET"/*.libs; do [ -d "$libs" ] && libpath="$libpath:$libs"; done
export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$TARGET:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1

# ---- what this machine is; MLX must see the GPU (else the table would be the CPU's)
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"; uname -a; "$PY" --version
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "nvidia package folders: ${nv_dirs:-none}"
  echo "libmlx.so libraries not found:"; ldd "$TARGET/mlx/lib/libmlx.so" | grep "not found" || echo "  none"
} >"$OUT/env.txt" 2>&1
"$PY" - >>"$OUT/env.txt" 2>&1 <<'EOF' || { cat "$OUT/env.txt" >&2; die "mlx does not import (see $OUT/env.txt)"; }
import mlx.core as mx, mlx_lm, eager_mlx
print("mlx", mx.__version__, "from", mx.__file__, "| mlx-lm", mlx_lm.__version__, "| eager_mlx from", eager_mlx.__file__)
print("default device:", mx.default_device(), "| device_info:", mx.device_info())
print("check:", (mx.ones((256, 256)) @ mx.ones((256, 256))).sum().item() == 256**3)
EOF
cat "$OUT/env.txt"
device=$("$PY" -c 'import mlx.core as mx; print(mx.default_device().type == mx.DeviceType.gpu)')
[ "$device" = "True" ] || [ "$CPU_OK" = 1 ] || die "MLX's default device is not a GPU (see $OUT/env.txt)"

# ---- the tables (bench.py saves after every section: a run cut by the time limit keeps what it measured)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
run_table() {  # name, then bench.py options
  local name=$1; shift
  [ "$(left)" -gt 30 ] || { echo "device.sh: no time left for $name"; return 0; }
  echo "== $name: python benchmarks/bench.py $* ($(left) s left)"
  (cd "$REPO" && timeout "$(left)" "$PY" benchmarks/bench.py "$@" --out "$OUT/$name.md" --json "$OUT/$name.json") \
    >"$OUT/$name.log" 2>&1 || echo "device.sh: $name exited $? (see $OUT/$name.log)"
  tail -5 "$OUT/$name.log"
}
echo "== fork-correctness on this device: python benchmarks/gpu_check.py ${CHECK_ARGS:-}"
# shellcheck disable=SC2086  # CHECK_ARGS is a list of options
(cd "$REPO" && timeout "${CHECK_TIMEOUT:-150}" "$PY" benchmarks/gpu_check.py ${CHECK_ARGS:-}) >"$OUT/gpu_check.log" 2>&1 \
  || echo "device.sh: gpu_check exited $? (see $OUT/gpu_check.log)"
cat "$OUT/gpu_check.log"
[ "$CHECK_ONLY" = 1 ] && { echo "device.sh: done in $(( $(date +%s) - START )) s; results in $OUT"; exit 0; }
run_table quick --quick --long
if [ "$FULL" = 1 ]; then
  if [ "$(left)" -gt 120 ]; then run_table full --long; else echo "device.sh: no time left for the full table"; fi
fi
echo "device.sh: done in $(( $(date +%s) - START )) s; results in $OUT"
