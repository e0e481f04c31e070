"""Decode tokens/s at temperature 1.0 / top-p 0.95 on a real model: what the exact nucleus costs where it is needed.

Run:  python benchmarks/nucleus_cost.py CHECKOUT MODEL ROWS

Uses CHECKOUT's benchmarks/perf_decode.py and whichever eager_mlx the interpreter imports: run it once with
each side's own interpreter (e.g. a worktree of an older commit with its .venv, and this one), alternating.
At these settings SmolLM2's 256 most probable tokens miss the nucleus on about one step in six
(benchmarks/nucleus_mass.py), where the engine draws the row again over the whole vocabulary.
"""
import sys

sys.path.insert(0, sys.argv[1] + "/benchmarks")
import eager_mlx.cpu_blas  # noqa: E402,F401  (OpenBLAS before mlx.core)
import perf_decode  # noqa: E402
from perf_models import load_real  # noqa: E402

perf_decode.TEMPERATURE = 1.0
bench = load_real(sys.argv[2])
runs = [perf_decode.ours(bench.model, bench.tokenizer, bench.prompt, int(sys.argv[3]), 24, top_p=0.95).tps
        for _ in range(3)]
print(sys.argv[1], sys.argv[2], "rows", sys.argv[3], "temperature 1.0 top-p 0.95 tok/s", [round(r, 1) for r in runs])
