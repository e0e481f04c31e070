"""Fork-correctness on whatever device MLX defaults to (run by benchmarks/device.sh on a GPU).

The CPU test suite (tests/test_architectures.py) checks every attention path there; this runs
the same check (tests/fork_check.py) on the default device, where the engine takes its GPU paths
(mx.fast attention over a per-pass copy for one request with a short prompt), and prints the
largest log-prob error per architecture and path. Exit status 1 if any exceeds the tolerance.

Run:  python benchmarks/gpu_check.py [--names llama,gpt_oss] [--paths split,joined] [--isolate]
  --isolate  each path in a fresh process, once compiled and once with MLX_DISABLE_COMPILE=1
             (tells a backend's compile problem, or state carried between paths, from the math)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import eager_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core on Linux)
import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import eager_mlx.engine.prefix as prefix_module  # noqa: E402
import eager_mlx.engine.attention as attention  # noqa: E402
from fork_check import fork_errors  # noqa: E402
from tiny_archs import build  # noqa: E402

NAMES = ["llama", "llama:sliding", "gpt_oss", "gemma3", "deepseek_v3", "qwen3_next", "falcon_h1"]
TOLERANCE = 1e-4  # as in the CPU tests (float32 tiny models)
PATHS = ["default", *attention.FORCED_PATHS]  # "default": the engine's own choice by shape


def errors(names: list[str], paths: list[str]) -> dict[tuple[str, str], float]:
    """{(architecture, path): largest log-prob error}, inf where the check raised."""
    prefix_module._PREFILL_CHUNK = 4  # the prompts prefill in several chunks
    out = {}
    for name in names:
        for path in paths:
            try:
                with attention.forced_path(path):
                    out[name, path] = max(fork_errors(build(name)).values())
            except Exception as e:  # noqa: BLE001  (report and go on: one failure must not hide the rest)
                out[name, path] = float("inf")
                print(f"{name} {path}: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def isolated(names: list[str], paths: list[str]) -> dict[tuple[str, str], float]:
    """errors() with each path (compiled, then not) in a fresh process."""
    out = {}
    for path in paths:
        for compiled in (True, False):
            env = dict(os.environ)
            if not compiled:
                env["MLX_DISABLE_COMPILE"] = "1"
            cmd = [sys.executable, __file__, "--names", ",".join(names), "--paths", path, "--raw"]
            lines = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout.splitlines()
            got = dict((tuple(line.split()[:2]), float(line.split()[2])) for line in lines if line.count(" ") == 2)
            for name in names:
                out[name, f"{path}{'' if compiled else '/nc'}"] = got.get((name, path), float("inf"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", default=",".join(NAMES))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--isolate", action="store_true")
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # 'name path error' lines (--isolate)
    args = ap.parse_args()
    names, paths = args.names.split(","), args.paths.split(",")
    if args.raw:
        for (name, path), error in errors(names, paths).items():
            print(name, path, error, flush=True)
        return 0
    print(f"device: {mx.default_device()}  mlx {mx.__version__}"
          f"{'  (each path in a fresh process; /nc: MLX_DISABLE_COMPILE=1)' if args.isolate else ''}")
    table = isolated(names, paths) if args.isolate else errors(names, paths)
    columns = list(dict.fromkeys(path for _, path in table))
    print(f"{'architecture':<16}" + "".join(f"{c:>11}" for c in columns))
    for name in names:
        print(f"{name:<16}" + "".join(f"{table[name, c]:11.1e}" for c in columns), flush=True)
    worst = max(table.values())
    print(f"largest error {worst:.1e} (tolerance {TOLERANCE:.0e}): {'ok' if worst <= TOLERANCE else 'FAILED'}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
