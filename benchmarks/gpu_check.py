"""Fork-correctness on whatever device MLX defaults to (run by benchmarks/device.sh on a GPU).

The CPU test suite (tests/test_architectures.py) checks every attention path there; this runs
the same check (tests/fork_check.py) on the default device, where the engine takes its GPU paths
(mx.fast attention over a per-pass copy for one request with a short prompt), and prints the
largest log-prob error per architecture and path. Exit status 1 if any exceeds the tolerance.

Run:  python benchmarks/gpu_check.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import eager_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core on Linux)
import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import eager_mlx.engine.engine as engine_module  # noqa: E402
import eager_mlx.engine.kv as kv  # noqa: E402
from fork_check import fork_errors  # noqa: E402
from tiny_archs import build  # noqa: E402

NAMES = ["llama", "llama:sliding", "gpt_oss", "gemma3", "deepseek_v3", "qwen3_next", "falcon_h1"]
TOLERANCE = 1e-4  # as in the CPU tests (float32 tiny models)
# path -> (kv._SHORT_SCORES, kv._SHORT_PROMPT_BYTES, kv._COPY_BYTES, kv._COPY_ON_CPU): forces one path
PATHS = {"default": None, "split": (0, 0, 0, False), "joined": (1 << 40, 1 << 40, 0, False),
         "copied": (0, 0, 1 << 40, True)}
_KNOBS = ("_SHORT_SCORES", "_SHORT_PROMPT_BYTES", "_COPY_BYTES", "_COPY_ON_CPU")


def main() -> int:
    print(f"device: {mx.default_device()}  mlx {mx.__version__}")
    print(f"{'architecture':<16}" + "".join(f"{p:>10}" for p in PATHS))
    engine_module._PREFILL_CHUNK = 4  # the prompts prefill in several chunks
    defaults = tuple(getattr(kv, k) for k in _KNOBS)
    worst = 0.0
    for name in NAMES:
        cells = []
        for sizes in PATHS.values():
            for knob, value in zip(_KNOBS, sizes or defaults):
                setattr(kv, knob, value)
            try:
                error = max(fork_errors(build(name)).values())
                worst = max(worst, error)
                cells.append(f"{error:10.1e}")
            except Exception as e:  # noqa: BLE001  (report and go on: one failure must not hide the rest)
                worst = float("inf")
                cells.append(f"{'ERROR':>10}")
                print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"{name:<16}" + "".join(cells), flush=True)
    print(f"largest error {worst:.1e} (tolerance {TOLERANCE:.0e}): {'ok' if worst <= TOLERANCE else 'FAILED'}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
