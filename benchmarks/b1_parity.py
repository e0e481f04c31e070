"""B = 1 parity: decode of one row, eager-mlx (a row alone in [prompt | suffix] buffers, one fused attention call
per layer) vs the same engine without that path vs mlx-lm's BatchGenerator; B = 8 for reference.

Run:  python benchmarks/b1_parity.py [--quick] [--counts] [--out BENCHMARKS.md]

Two measurements, both side by side in one run:

* tokens/s, the three sides interleaved (the order rotates every repeat), reported as the median of paired
  ratios with their interquartile range; on a shared machine the load is printed with the table;
* `--cpu`: CPU time per decode step (each side in its own process with one BLAS thread, the process's CPU
  clock over the timed window instead of the wall clock): the work a step costs, which other processes on a
  shared machine change far less than its wall time. (Instruction counts would be better still; `perf`
  has no hardware counters in this VM.)

Models are the real architectures' configs with random weights (tests/fakes-style tokenizer; nothing is
downloaded), short prompt (32 tokens), branching off, as section 1 of benchmarks/bench.py.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import eager_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core on Linux)

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests"))
import eager_mlx.engine.attention as attention  # noqa: E402
from fakes import ByteTokenizer  # noqa: E402
from perf_decode import ours, prefill_one, theirs  # noqa: E402
from perf_env import header_lines, load_average  # noqa: E402
from perf_models import build_random, random_prompt  # noqa: E402
from perf_stats import paired  # noqa: E402
from sections import write_section  # noqa: E402

MARKER = "<!-- b1_parity.py -->"
MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")
SIDES = ("solo", "no solo", "mlx-lm")


def _one(model, tok, prompt, cache, side: str, rows: int, tokens: int) -> float:
    """Tokens/s of one timed window of `side`."""
    if side == "mlx-lm":
        return theirs(model, prompt, cache, rows, tokens).tps
    attention._SOLO = side == "solo"
    try:
        return ours(model, tok, prompt, rows, tokens).tps
    finally:
        attention._SOLO = True


def timed(name: str, rows: int, tokens: int, repeats: int) -> dict[str, list[float]]:
    """tokens/s per side, `repeats` interleaved rounds (the first side rotates)."""
    model = build_random(name)
    tok, prompt = ByteTokenizer(), random_prompt(32, model.args.vocab_size)
    cache = prefill_one(model, prompt)
    out: dict[str, list[float]] = {s: [] for s in SIDES}
    for i in range(repeats):
        for side in SIDES[i % 3:] + SIDES[: i % 3]:
            out[side].append(_one(model, tok, prompt, cache, side, rows, tokens))
    return out


def _cpu_child(name: str, side: str, steps: int) -> None:
    """In a child process (one BLAS thread): print CPU ms per B = 1 step of `side` over `steps` timed steps."""
    import time
    import types

    import perf_decode

    perf_decode.time = types.SimpleNamespace(perf_counter=time.process_time)  # its window on the CPU clock
    model = build_random(name)
    tok, prompt = ByteTokenizer(), random_prompt(32, model.args.vocab_size)
    if side == "mlx-lm":
        tps = theirs(model, prompt, prefill_one(model, prompt), 1, steps).tps
    else:
        attention._SOLO = side == "solo"
        tps = ours(model, tok, prompt, 1, steps).tps
    print(f"cpu_ms_per_step {1e3 / tps}")


def cpu(name: str, steps: int, repeats: int) -> dict[str, list[float]]:
    """CPU ms per B = 1 step per side, each measured in a fresh process with one BLAS thread."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out: dict[str, list[float]] = {s: [] for s in SIDES}
    for i in range(repeats):
        for side in SIDES[i % 3:] + SIDES[: i % 3]:
            cmd = [sys.executable, __file__, "--child", name, side, str(steps)]
            text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            out[side].append(float(text.split("cpu_ms_per_step")[1]))
    return out


def _median(x: list[float]) -> float:
    return sorted(x)[len(x) // 2]


def table(results: dict[tuple[str, int], dict[str, list[float]]], unit: str, higher_better: bool) -> str:
    lines = [f"| model | B | solo {unit} | no solo {unit} | mlx-lm {unit} | solo / mlx-lm | no solo / mlx-lm | "
             f"solo / no solo |", "|---|---|---|---|---|---|---|---|"]
    for (name, rows), r in results.items():
        def ratio(a: str, b: str) -> str:
            x, y = (r[a], r[b]) if higher_better else (r[b], r[a])  # always "faster is > 1"
            return paired(x, y).iqr_text()
        lines.append(f"| {name} | {rows} | {_median(r['solo']):,.1f} | {_median(r['no solo']):,.1f} | "
                     f"{_median(r['mlx-lm']):,.1f} | {ratio('solo', 'mlx-lm')} | {ratio('no solo', 'mlx-lm')} | "
                     f"{ratio('solo', 'no solo')} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    ap.add_argument("--cpu", action="store_true", help="also CPU ms per B = 1 step, one BLAS thread")
    ap.add_argument("--out", type=Path, default=None, help="write the section into this markdown file")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _cpu_child(args.child[0], args.child[1], int(args.child[2]))
        return
    tokens, repeats = (12, 3) if args.quick else (24, 7)
    load_before = load_average()
    speed = {(name, rows): timed(name, rows, tokens, repeats) for name in MODELS for rows in (1, 8)}
    command = "python benchmarks/b1_parity.py " + " ".join(a for a in (argv or sys.argv[1:]))
    body = ["## B = 1 parity: a row alone in one [prompt | suffix] buffer (benchmarks/b1_parity.py)", "",
            *header_lines(command.strip(), load_before), "",
            f"Tokens/s, {repeats} interleaved repeats of {tokens} steps; ratios are medians of paired ratios "
            "[interquartile range], > 1 means the first side is faster:", "", table(speed, "tok/s", True)]
    if args.cpu:
        steps = 12 if args.quick else 24
        work = {(name, 1): cpu(name, steps, 2 if args.quick else 5) for name in MODELS}
        body += ["", f"CPU time per B = 1 step (ms; each side in a fresh process with one BLAS thread, {steps} "
                     "steps), ratios > 1 mean the first side does less work:", "", table(work, "ms", False)]
    text = "\n".join(body)
    print(text)
    if args.out:
        write_section(args.out, MARKER, text)


if __name__ == "__main__":
    main()
