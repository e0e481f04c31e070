"""Beyond the paper, measured: calibrated theta, consensus early stop, confidence vote and pruning
against eager-adapt alone and full parallel, on the same problems.

Run:  python benchmarks/beyond.py [--model smollm2-135m] [--limit 12] [-M 4] [--max-tokens 96]

The data is a small synthetic arithmetic set (written to OUT/arith.jsonl; fixed
seed): two-digit additions and one-digit products, which SmolLM2-135M solves
part of the time (it scores 0 on GSM8K). Every run is one `eager-mlx eval`
command (printed and recorded); every run records the confidence-weighted vote,
so wcons@k is comparable across rows. The table goes into BENCHMARKS.md
between the markers below (replaced if present, appended otherwise).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

START, END = "<!-- beyond:start -->", "<!-- beyond:end -->"

VARIANTS = (  # (name, method, extra options)
    ("parallel", "parallel", []),
    ("eager-adapt", "eager-adapt", []),
    ("adapt + theta auto", "eager-adapt", ["--threshold", "auto"]),
    ("adapt + consensus beta", "eager-adapt", ["--consensus", "beta"]),
    ("adapt + consensus window", "eager-adapt", ["--consensus", "window"]),
    ("adapt + consensus beta + abort", "eager-adapt", ["--consensus", "beta", "--consensus-abort"]),
    ("adapt + prune p10", "eager-adapt", ["--prune-confidence", "10", "--prune-warmup", "2",
                                          "--confidence-window", "16"]),
    ("parallel + consensus window + abort", "parallel", ["--consensus", "window", "--consensus-window", "2",
                                                         "--consensus-abort"]),
)


def write_data(path: Path, n: int, seed: int = 7) -> None:
    """n arithmetic problems: even ones a + b (10..99), odd ones a * b (2..9)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            q, ans = f"What is {a} + {b}?", a + b
        else:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            q, ans = f"What is {a} * {b}?", a * b
        lines.append(json.dumps({"question": q, "answer": str(ans)}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("-M", "--max-sequences", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=55)
    ap.add_argument("--out", type=Path, default=Path("runs/beyond"))
    ap.add_argument("--bench", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--only", nargs="*", default=None, help="Run only these variant names.")
    args = ap.parse_args()

    from eager_mlx.evaluation.report import run_summary

    data = args.out / "arith.jsonl"
    write_data(data, args.limit)
    common = ["--model", args.model, "--data", str(data), "-M", str(args.max_sequences), "--max-tokens",
              str(args.max_tokens), "--max-rows", "16", "--seed", str(args.seed), "--confidence-vote",
              "--no-store"]  # every variant computes its runs: the table compares wall times
    rows, commands = [], []
    for name, method, extra in VARIANTS:
        if args.only and name not in args.only:
            continue
        out = args.out / name.replace(" + ", "+").replace(" ", "-")
        cmd = ["eager-mlx", "eval", *common, "--method", method, *extra, "--out", str(out)]
        if (out / "manifest.json").exists():
            cmd.append("--resume")
        commands.append(shlex.join(cmd))
        print("$", commands[-1], flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        summary = run_summary(out)
        manifest = json.loads((out / "manifest.json").read_text())
        summary.update(name=name, process_s=time.perf_counter() - t0,
                       pruned=sum(s["finish_reason"] == "pruned" for r in _records(out) for s in r["sequences"]),
                       theta_auto=manifest.get("threshold_auto"))
        rows.append(summary)

    lines = [START, "## Beyond the paper: calibrated theta, consensus stop, confidence vote and pruning", "",
             f"`python benchmarks/beyond.py --model {args.model} --limit {args.limit} -M {args.max_sequences} "
             f"--max-tokens {args.max_tokens}` on {platform.machine()} ({platform.system()}), "
             f"{time.strftime('%Y-%m-%d')}. Data: {args.limit} synthetic arithmetic problems "
             "(two-digit sums, one-digit products; `benchmarks/beyond.py:write_data`). "
             "#T = generated tokens, time = the eval's wall time (model load excluded), "
             "wcons@k = confidence-weighted vote.", "",
             "| variant | theta | Pass@k | cons@k | wcons@k | #T | #S | pruned | time s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['theta']:.3g} | {r['pass_at_k']:.3f} | {r['cons_at_k']:.3f} | "
                     f"{fmt(r['wcons_at_k'], '.3f')} | {r['total_tokens']} | {r['sequences_per_prompt']:.2f} | "
                     f"{r['pruned']} | {r['wall_s']:.1f} |")
    lines += ["", "Commands:", "", "```bash", *commands, "```", END]
    section = "\n".join(lines) + "\n"
    print(section)
    text = args.bench.read_text() if args.bench.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    args.bench.write_text(text)
    print(f"wrote {args.bench}", file=sys.stderr)


def _records(out: Path) -> list[dict]:
    from eager_mlx.evaluation.evaluate import load_run

    return load_run(out)[1]


if __name__ == "__main__":
    main()
