"""Where a run's sequences went, against parallel sampling's samples of the same problems (issue 19's "why").

Run:  python benchmarks/allocation.py OUT_DIR NAME [NAME ...]   (OUT_DIR holds `parallel/` and each NAME/)
For each run: the problems it gave at most 2 sequences (how many it solved there, and how many parallel's M
samples solved), the problems it gave more than M (its sequences there, solved by it / by parallel), and the
problems parallel solved and it did not ("lost", with the sequences it gave each) or the other way ("won").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from eager_mlx.evaluation.rundir import load_run


def solved(record: dict) -> bool:
    return any(s["correct"] for s in record["sequences"])


def allocation_row(name: str, run: dict[int, dict], parallel: dict[int, dict], m: int) -> str:
    """One markdown table row for `run` (records by problem index) against `parallel`'s records."""
    n = {i: len(r["sequences"]) for i, r in run.items()}
    few = [i for i in run if n[i] <= 2]
    many = [i for i in run if n[i] > m]
    lost = sorted(n[i] for i in run if solved(parallel[i]) and not solved(run[i]))
    won = sum(solved(run[i]) and not solved(parallel[i]) for i in run)
    return (f"| {name} | {len(few)} | {sum(solved(run[i]) for i in few)} / {sum(solved(parallel[i]) for i in few)} | "
            f"{len(many)} ({sum(n[i] for i in many)} seq) | {sum(solved(run[i]) for i in many)} / "
            f"{sum(solved(parallel[i]) for i in many)} | {len(lost)} ({', '.join(map(str, lost))}) | {won} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("names", nargs="+")
    args = ap.parse_args()
    manifest, par = load_run(args.runs / "parallel")
    parallel = {r["index"]: r for r in par if r.get("metrics")}
    m = manifest["settings"]["scheduler"]["max_sequences"]
    print(f"| run | problems with <= 2 seq | solved there: run / parallel's {m} | problems with > {m} seq | "
          f"solved there: run / parallel | lost to parallel (the run's seq on each) | won |")
    print("|---|---|---|---|---|---|---|")
    for name in args.names:
        run = {r["index"]: r for r in load_run(args.runs / name)[1] if r.get("metrics")}
        print(allocation_row(name, run, parallel, m))


if __name__ == "__main__":
    main()
