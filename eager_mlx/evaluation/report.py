"""Comparing eval runs: one summary row per run, the paper's table, and the Pass@k-vs-tokens plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from eager_mlx.evaluation.scheduler import METHODS

__all__ = ["run_summary", "format_table", "plot_runs"]


def run_summary(run_dir: Path) -> dict[str, Any]:
    """One row of the report: the run's settings and its metrics recomputed from the records (of the prompts
    that ran; `skipped` counts the others)."""
    from dataclasses import asdict

    from eager_mlx.evaluation.evaluate import evaluated, record_metrics
    from eager_mlx.evaluation.metrics import run_metrics
    from eager_mlx.evaluation.shards import load_merged

    manifest, records = load_merged(run_dir)  # a sharded run's rank-N folders are merged
    wall = max((r["t_done"] for r in records), default=0.0)
    ran = evaluated(records)
    m = run_metrics([record_metrics(r) for r in ran], wall_s=wall)
    sched = manifest["settings"]["scheduler"]
    weighted = [r["weighted_vote"]["correct"] for r in records if "weighted_vote" in r]
    return {
        "run": Path(run_dir).name,
        "method": manifest["method"],
        "M": sched["max_sequences"],
        "theta": sched["threshold"],
        "dataset": manifest["dataset"]["name"],
        "hash": manifest["dataset"]["hash"],
        "prompts": f"{m.num_prompts}/{manifest['dataset']['size']}",  # that ran / in the dataset
        "skipped": len(records) - len(ran),  # too long for the model's context (their records say why)
        "model": manifest.get("model", ""),
        **asdict(m),
        "wcons_at_k": sum(weighted) / len(weighted) if weighted else None,
        "occupancy": (manifest.get("occupancy") or {}).get("mean_occupancy"),
    }


COLUMNS: Sequence[tuple[str, str, Callable[[Any], str]]] = (
    ("run", "run", str),
    ("method", "method", str),
    ("M", "M", str),
    ("theta", "theta", lambda v: f"{v:g}"),
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


def plot_runs(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """PNG of Pass@k against generated tokens: one line (its runs as points) per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the plot needs matplotlib (pip install matplotlib), or pass --no-plot") from None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        pts = sorted((r["total_tokens"], r["pass_at_k"]) for r in rows if r["method"] == method)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=method)
    ax.set_xlabel("generated tokens (#T, shared prefixes once)")
    ax.set_ylabel("Pass@k")
    datasets = sorted({Path(r["dataset"]).name for r in rows})
    models = sorted({Path(str(r["model"])).name for r in rows if r["model"]})
    ax.set_title(f"Pass@k vs tokens: {', '.join(datasets)}" + (f" ({', '.join(models)})" if models else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
