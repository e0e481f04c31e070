"""End to end: full parallel sampling vs the EAGer methods on the same problems, from eval run folders.

Run:  python benchmarks/e2e.py runs/gsm8k30 [--out BENCHMARKS.md]
(the runs come from `bash benchmarks/gsm8k_methods.sh runs/gsm8k30`). Prints the table and each method
against issue 12's targets, and writes them into BENCHMARKS.md between `<!-- e2e.py -->` markers.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from eager_mlx.evaluation.report import format_table, run_summary
from sections import write_section  # benchmarks/ is the script's folder

RUNS = ("parallel", "eager-init", "eager-adapt", "eager-adapt+consensus")


def checks(rows: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """(target, measured, holds) for each of issue 12's targets whose runs are there."""
    p = rows["parallel"]
    out = []
    if "eager-adapt" in rows:
        a = rows["eager-adapt"]
        speed = a["tokens_per_s"] / p["tokens_per_s"]
        out += [("eager-adapt tokens/s >= 0.9x parallel's", f"{speed:.2f}x", speed >= 0.9),
                ("eager-adapt Pass@k not lower", f"{a['pass_at_k']:.3f} vs {p['pass_at_k']:.3f}",
                 a["pass_at_k"] >= p["pass_at_k"]),
                ("eager-adapt cons@k higher", f"{a['cons_at_k']:.3f} vs {p['cons_at_k']:.3f}",
                 a["cons_at_k"] > p["cons_at_k"])]
    if "eager-init" in rows:
        share = rows["eager-init"]["total_tokens"] / p["total_tokens"]
        out.append(("eager-init tokens <= 50% of parallel's", f"{share:.0%}", share <= 0.5))
    if "eager-adapt+consensus" in rows:
        c = rows["eager-adapt+consensus"]
        share = c["total_tokens"] / p["total_tokens"]
        out += [("eager-adapt + consensus tokens <= 60% of parallel's", f"{share:.0%}", share <= 0.6),
                ("eager-adapt + consensus Pass@k not lower", f"{c['pass_at_k']:.3f} vs {p['pass_at_k']:.3f}",
                 c["pass_at_k"] >= p["pass_at_k"])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = ap.parse_args()
    rows = {m: run_summary(args.runs / m) for m in RUNS if (args.runs / m / "results.jsonl").exists()}
    for name, row in rows.items():
        row["run"] = name
    if "parallel" not in rows:
        raise SystemExit(f"{args.runs}: needs at least the parallel run")
    p = rows["parallel"]
    lines = ["```", format_table(list(rows.values())), "```", "",
             "| target (issue 12) | measured | holds |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'no'} |" for name, value, ok in checks(rows)]
    report = "\n".join(lines)
    print(report)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (f"## End to end: parallel vs EAGer on {p['prompts']} {p['dataset']} problems, {p['model']}, M={p['M']}\n\n"
            f"Commands: `bash benchmarks/gsm8k_methods.sh {args.runs}` then `python benchmarks/e2e.py {args.runs}` "
            f"(load average when the table was made: {load}; wall times are those of each eval)\n\n" + report)
    write_section(args.out, "<!-- e2e.py -->", body)


if __name__ == "__main__":
    main()
