"""End to end: full parallel vs the EAGer methods on the same problems, from eval run folders.

Run:  python benchmarks/e2e.py runs/gsm8k20 [--out BENCHMARKS.md]
(the runs come from `bash benchmarks/gsm8k_methods.sh runs/gsm8k20`). Prints the
table and the eager-adapt / parallel ratios against the targets, and writes them
into BENCHMARKS.md between `<!-- e2e.py -->` markers.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from eager_mlx.evaluation.report import format_table, run_summary
from sections import write_section  # benchmarks/ is the script's folder

METHODS = ("parallel", "eager-init", "eager-adapt", "eager")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = ap.parse_args()
    rows = {m: run_summary(args.runs / m) for m in METHODS if (args.runs / m / "results.jsonl").exists()}
    if "parallel" not in rows or "eager-adapt" not in rows:
        raise SystemExit(f"{args.runs}: needs at least the parallel and eager-adapt runs")
    p, a = rows["parallel"], rows["eager-adapt"]
    tokens, wall = a["total_tokens"] / p["total_tokens"], a["wall_s"] / p["wall_s"]
    checks = [
        ("tokens <= 40% of the baseline's", f"{tokens:.0%}", tokens <= 0.4),
        ("wall time <= 50% of the baseline's", f"{wall:.0%}", wall <= 0.5),
        ("Pass@k no lower", f"{a['pass_at_k']:.3f} vs {p['pass_at_k']:.3f}", a["pass_at_k"] >= p["pass_at_k"]),
        ("cons@k (reported)", f"{a['cons_at_k']:.3f} vs {p['cons_at_k']:.3f}", None),
    ]
    lines = ["```", format_table(list(rows.values())), "```", "",
             "| eager-adapt vs parallel | measured | target holds |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'-' if ok is None else ('yes' if ok else 'no')} |" for name, value, ok in checks]
    report = "\n".join(lines)
    print(report)
    body = (f"## End to end: the four methods on {p['prompts']} {p['dataset']} problems, {p['model']}, M={p['M']}\n\n"
            f"Commands: `bash benchmarks/gsm8k_methods.sh {args.runs}` then `python benchmarks/e2e.py {args.runs}`\n\n"
            + report)
    write_section(args.out, "<!-- e2e.py -->", body)


if __name__ == "__main__":
    main()
