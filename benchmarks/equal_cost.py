"""Issue 19's end-to-end table: every run of one dataset against parallel sampling at equal generated tokens.

Run:  python benchmarks/equal_cost.py OUT_DIR [--default NAME] [--cheap NAME] [--write]
(the runs come from `bash benchmarks/equal_cost_runs.sh DATA OUT_DIR STORE_DIR`). Prints the summary table, the
equal-cost table (the difference with a paired bootstrap 95% interval over problems), the share of the M x |D|
budget each run spent, the wall time of the ranked policies against one parallel run, and issue 19's targets;
with --write also into BENCHMARKS.md between `<!-- equal_cost.py OUT_DIR's name -->` markers.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from eager_mlx.evaluation.report import equal_cost_rows, format_equal_cost, format_table, run_summary
from sections import write_section  # benchmarks/ is the script's folder

POLICY_RUNS = ("eager-adapt-hitm", "eager-adapt-rank", "eager-adapt-disagree", "eager-adapt-seq",
               "parallel-adapt-seq", "parallel-adapt-disagree")


def spent(row: dict) -> float:
    """Sequences generated / the M x |D| budget."""
    return row["total_sequences"] / (row["M"] * row["num_prompts"])


def checks(par: dict, compared: dict, default: str | None, cheap: str | None) -> list[tuple[str, str, bool]]:
    """(target, measured, holds) for issue 19's targets whose runs are there."""
    out = []
    full = par["pass_at_k"]
    if default in compared:
        r, e = compared[default]
        out += [(f"default ({default}) spends >= 90% of M x \\|D\\|", f"{spent(r):.0%}", spent(r) >= 0.9),
                (f"default ({default}) Pass@k >= parallel at equal tokens", f"{e.pass_diff:+.3f}", e.pass_diff >= 0),
                (f"default ({default}) cons@k >= parallel at equal tokens", f"{e.cons_diff:+.3f}", e.cons_diff >= 0)]
    if cheap in compared:
        r, e = compared[cheap]
        out += [(f"cheap ({cheap}) tokens <= 50% of parallel's", f"{e.tokens_ratio:.0%}", e.tokens_ratio <= 0.5),
                (f"cheap ({cheap}) Pass@k and cons@k >= parallel at equal tokens",
                 f"{e.pass_diff:+.3f} / {e.cons_diff:+.3f}", e.pass_diff >= 0 and e.cons_diff >= 0),
                (f"cheap ({cheap}) reaches parallel's full-M Pass@k", f"{e.pass_at_k:.3f} vs {full:.3f}",
                 e.pass_at_k >= full)]
    if "eager" in compared:
        r, e = compared["eager"]
        out.append(("eager (labels) at <= parallel's tokens reaches parallel's full-M Pass@k",
                    f"{e.pass_at_k:.3f} vs {full:.3f} at {e.tokens_ratio:.0%}",
                    e.pass_at_k >= full and e.tokens_ratio <= 1.0))
    ran = [compared[n][0]["wall_s"] for n in POLICY_RUNS if n in compared]
    if len(ran) == len(POLICY_RUNS):
        first = compared.get("eager-init", ({"wall_s": 0.0}, None))[0]["wall_s"]  # the policies' shared first runs
        ratio = (sum(ran) + first) / par["wall_s"]
        out.append((f"{len(ran)} policies through the store (+ eager-init) <= 2.5x one parallel run's wall time",
                    f"{ratio:.2f}x", ratio <= 2.5))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--default", default=None, help="the run of the shipped eval default")
    ap.add_argument("--cheap", default=None, help="the run of the cheap setting")
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--write", action="store_true", help="write the section into --out")
    args = ap.parse_args()
    folders = sorted(d for d in args.runs.iterdir() if (d / "results.jsonl").exists())
    rows = {d.name: run_summary(d) for d in folders}
    unfinished = [name for name, row in rows.items() if not row["finished"]]
    folders = [d for d in folders if d.name not in unfinished]  # a run still going compares on part of the data
    rows = {d.name: rows[d.name] for d in folders}
    base = args.runs / "parallel"
    compared = {r["run"]: (r, e) for r, e in equal_cost_rows(folders, base)}
    lines = ["```", format_table(list(rows.values())), "```", "", "```", format_equal_cost(list(compared.values()), base),
             "```", "", "| run | spent of M x \\|D\\| | store: replayed / stored runs | wall s |", "|---|---|---|---|"]
    for d in folders:
        store = rows[d.name]["store"]
        lines.append(f"| {d.name} | {spent(rows[d.name]):.0%} | {store.get('replayed', '-')} / "
                     f"{store.get('stored', '-')} | {rows[d.name]['wall_s']:.0f} |")
    lines += ["", "| target (issue 19) | measured | holds |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in
              checks(rows["parallel"], compared, args.default, args.cheap)]
    if unfinished:
        lines += ["", f"Not finished when the table was made (left out): {', '.join(unfinished)}."]
    report = "\n".join(lines)
    print(report)
    if args.write:
        p = rows["parallel"]
        env = f"MODEL={p['model']} MAX_TOKENS={p['max_tokens']} "  # equal_cost_runs.sh's model and length
        thetas = {r["theta"] for r in rows.values() if r["theta"] is not None}
        env += f"THRESHOLD={thetas.pop()} " if len(thetas) == 1 else ""  # one theta for all: say it
        picks = "".join(f" --{k} {v}" for k, v in (("default", args.default), ("cheap", args.cheap)) if v)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        data = p["dataset"]  # a data file as given to eval: relative to here when it is under here
        if os.path.isabs(data) and Path(data).resolve().is_relative_to(Path.cwd()):
            data = os.path.relpath(data)
        body = (f"## Equal cost: adaptive methods vs parallel sampling on {p['prompts']} {data} problems, "
                f"{p['model']}, M={p['M']}\n\nCommands: `{env}bash benchmarks/equal_cost_runs.sh {data} "
                f"{args.runs} STORE` then `python benchmarks/equal_cost.py {args.runs}{picks} --write` (load average "
                f"when the table was made: {load}; wall times are each eval's own, on a shared machine)\n\n" + report)
        write_section(args.out, f"<!-- equal_cost.py {args.runs.resolve().name} -->", body)


if __name__ == "__main__":
    main()
