"""Comparing eval runs: one summary row per run, the paper's table, the equal-cost table against parallel
sampling (equal_cost.py), and the Pass@k-vs-tokens plot with parallel's frontier."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from eager_mlx.evaluation.equal_cost import EqualCost, equal_cost, parallel_curve
from eager_mlx.evaluation.scheduler import METHODS, WAVE_METHODS

__all__ = ["run_summary", "format_table", "plot_runs", "find_baseline", "equal_cost_rows", "format_equal_cost"]

_UNBRANCHED = ("parallel", "parallel-adapt")  # theta plays no part


def _theta(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:g}"


def _policy(method: str, sched: dict) -> str:
    """The policy column: the wave policy, with parallel-adapt's first-run size when one was set (``sequential/f3``)."""
    if method not in WAVE_METHODS:
        return "-"
    floor = sched.get("first_samples")
    return sched.get("policy", "hit-m") + (f"/f{floor}" if floor else "")


def run_summary(run_dir: Path) -> dict[str, Any]:
    """One row of the report: the run's settings and its metrics recomputed from the records (of the prompts
    that ran; `skipped` counts the others)."""
    from dataclasses import asdict

    from eager_mlx.evaluation.evaluate import evaluated, record_metrics
    from eager_mlx.evaluation.metrics import run_metrics
    from eager_mlx.evaluation.shards import load_merged

    manifest, records = load_merged(run_dir)  # a sharded run's rank-N folders are merged
    eager = manifest["settings"]["eager"]
    wall = max((r["t_done"] for r in records), default=0.0)
    ran = evaluated(records)
    m = run_metrics([record_metrics(r) for r in ran], wall_s=wall)
    sched = manifest["settings"]["scheduler"]
    weighted = [r["weighted_vote"]["correct"] for r in records if "weighted_vote" in r]
    return {
        "run": Path(run_dir).name,
        "method": manifest["method"],
        "M": sched["max_sequences"],
        "theta": None if manifest["method"] in _UNBRANCHED else sched["threshold"],
        "policy": _policy(manifest["method"], sched),
        "rule": "-" if manifest["method"] in _UNBRANCHED else eager.get("branch_rule", "top2"),
        "dataset": manifest["dataset"]["name"],
        "hash": manifest["dataset"]["hash"],
        "prompts": f"{m.num_prompts}/{manifest['dataset']['size']}",  # that ran / in the dataset
        "skipped": len(records) - len(ran),  # too long for the model's context (their records say why)
        "model": manifest.get("model", ""),
        **asdict(m),
        "wcons_at_k": sum(weighted) / len(weighted) if weighted else None,
        "occupancy": (manifest.get("occupancy") or {}).get("mean_occupancy"),
        "max_tokens": eager["max_tokens"],
        "finished": bool(manifest.get("finished")),
        "store": manifest.get("store") or {},  # runs replayed from / added to the run store (none: --no-store)
    }


COLUMNS: Sequence[tuple[str, str, Callable[[Any], str]]] = (
    ("run", "run", str),
    ("method", "method", str),
    ("M", "M", str),
    ("theta", "theta", _theta),
    ("policy", "policy", str),
    ("rule", "rule", str),
    ("prompts", "prompts", str),
    ("skipped", "skipped", str),
    ("pass_at_1", "Pass@1", lambda v: f"{v:.3f}"),
    ("pass_at_k", "Pass@k", lambda v: f"{v:.3f}"),
    ("cons_at_k", "cons@k", lambda v: f"{v:.3f}"),
    ("wcons_at_k", "wcons@k", lambda v: "-" if v is None else f"{v:.3f}"),
    ("pass_rate", "PR", lambda v: f"{v:.3f}"),
    ("total_tokens", "#T", str),
    ("tokens_per_prompt", "#T/prompt", lambda v: f"{v:.0f}"),
    ("sequences_per_prompt", "#S", lambda v: f"{v:.2f}"),
    ("wall_s", "time s", lambda v: f"{v:.1f}"),
    ("tokens_per_s", "tok/s", lambda v: f"{v:.1f}"),
    ("occupancy", "occ", lambda v: "-" if v is None else f"{v:.0%}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The paper's table, one line per run."""
    cells = [[title for _, title, _ in COLUMNS]] + [[fmt(r[key]) for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if c > 1 else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def find_baseline(run_dirs: Sequence[Path], baseline: Optional[Path] = None) -> Optional[Path]:
    """The parallel run to compare with: `baseline`, else the first of `run_dirs` whose method is parallel."""
    from eager_mlx.evaluation.shards import load_merged

    if baseline is not None:
        if load_merged(baseline)[0]["method"] != "parallel":
            raise ValueError(f"--baseline {baseline}: not a parallel run")
        return Path(baseline)
    return next((Path(d) for d in run_dirs if load_merged(d)[0]["method"] == "parallel"), None)


def equal_cost_rows(run_dirs: Sequence[Path], baseline: Path) -> list[tuple[dict[str, Any], EqualCost]]:
    """Each run but the baseline (its summary row) against parallel's samples at its generated tokens."""
    from eager_mlx.evaluation.shards import load_merged

    base = load_merged(baseline)[1]
    out = []
    for d in run_dirs:
        if Path(d).resolve() == Path(baseline).resolve():
            continue
        try:
            out.append((run_summary(d), equal_cost(load_merged(d)[1], base)))
        except ValueError as e:
            raise ValueError(f"{d} against {baseline}: {e}") from None
    return out


def format_equal_cost(rows: Sequence[tuple[dict[str, Any], EqualCost]], baseline: Path) -> str:
    """The equal-cost table: each run's Pass@k and cons@k, parallel's at the same tokens, the difference and its
    paired bootstrap 95% interval over problems."""
    ci = lambda d, c: f"{d:+.3f} [{c[0]:+.3f}, {c[1]:+.3f}]"  # noqa: E731
    head = ["run", "method", "policy", "rule", "theta", "problems", "tokens", "n", "Pass@k", "par pass@n",
            "diff [95% CI]", "cons@k", "par cons@n", "diff [95% CI]"]
    cells = [head]
    for r, e in rows:
        n = f"{e.n:.2f}" + (f" (>M: par at {e.max_n})" if e.beyond_parallel else "")
        cells.append([r["run"], r["method"], r["policy"], r["rule"], _theta(r["theta"]), str(e.problems),
                      f"{e.tokens_ratio:.0%}", n, f"{e.pass_at_k:.3f}", f"{e.parallel_pass:.3f}",
                      ci(e.pass_diff, e.pass_ci), f"{e.cons_at_k:.3f}", f"{e.parallel_cons:.3f}",
                      ci(e.cons_diff, e.cons_ci)])
    widths = [max(len(row[c]) for row in cells) for c in range(len(head))]
    lines = ["  ".join(cell.rjust(w) if c > 3 else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (f"equal cost: each run against parallel sampling's own samples ({Path(baseline).name}) at the run's "
             f"generated tokens (tokens: the run's share of parallel's; n: parallel samples per problem)")
    return "\n".join([title] + lines)


def plot_runs(rows: Sequence[dict[str, Any]], path: Path, baseline: Optional[Path] = None) -> None:
    """PNG of Pass@k against generated tokens: one line (its runs as points) per method, and with a parallel
    `baseline` its pass@n and cons@n curves (n = 1..M, from its own samples): the frontier to beat."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the plot needs matplotlib (pip install matplotlib), or pass --no-plot") from None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if baseline is not None:
        from eager_mlx.evaluation.shards import load_merged

        curve = parallel_curve(load_merged(baseline)[1])
        xs = [t for t, _, _ in curve]
        ax.plot(xs, [p for _, p, _ in curve], ls="--", color="grey", label="parallel pass@n (frontier)")
        ax.plot(xs, [c for _, _, c in curve], ls=":", color="grey", label="parallel cons@n")
        ax.scatter([r["total_tokens"] for r in rows], [r["cons_at_k"] for r in rows], marker="x", color="black",
                   s=18, label="cons@k of each run")
    label = lambda r: r["method"] + (f" ({r['policy']})" if r["policy"] not in ("-", "hit-m") else "")  # noqa: E731
    for name in dict.fromkeys(label(r) for r in sorted(rows, key=lambda r: METHODS.index(r["method"]))):
        pts = sorted((r["total_tokens"], r["pass_at_k"]) for r in rows if label(r) == name)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    ax.set_xlabel("generated tokens (#T, shared prefixes once)")
    ax.set_ylabel("Pass@k (x: cons@k)" if baseline is not None else "Pass@k")
    datasets = sorted({Path(r["dataset"]).name for r in rows})
    models = sorted({Path(str(r["model"])).name for r in rows if r["model"]})
    ax.set_title(f"Pass@k vs tokens: {', '.join(datasets)}" + (f" ({', '.join(models)})" if models else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
