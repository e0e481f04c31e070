"""Choosing eval's operating point by evidence: the frontier calibration (``calibrate --objective frontier``).

On a labelled dev split (default GSM8K train, never a test split), parallel sampling
runs once at M; then every label-free configuration of a grid (theta x branch rule x
policy for eager-adapt and eager-parallel, and parallel sampling in rounds) runs through the run store,
so configurations that share runs (the policies share first runs and most extra
runs) cost only the runs not yet made. Each is compared with parallel at equal
generated tokens (equal_cost.py). The chosen configuration is the best one that
spends no more tokens than parallel: the largest min(Pass@k difference, cons@k
difference), ties broken by their sum, then by fewer tokens. It becomes the
preset's ``eval`` defaults (models/preset.py ``PresetEval``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from eager_mlx.evaluation.equal_cost import EqualCost

__all__ = ["GRID_METHODS", "Candidate", "grid", "choose", "eval_toml", "write_preset_eval", "run_frontier"]


@dataclass(frozen=True)
class Candidate:
    """One label-free configuration of the grid."""

    method: str  # eager-adapt, eager-parallel or parallel-adapt
    policy: str
    threshold: Optional[float]  # None for parallel-adapt (no branching)
    branch_rule: str = "top2"
    first_samples: Optional[int] = None  # parallel-adapt: samples of every first run (None: the default, 2)

    @property
    def name(self) -> str:
        if self.method == "parallel-adapt":
            floor = f"-f{self.first_samples}" if self.first_samples is not None else ""
            return f"parallel-adapt-{self.policy}{floor}"
        return f"{self.method}-{self.policy}-t{self.threshold:g}-{self.branch_rule}"


GRID_METHODS = ("eager-adapt", "eager-parallel", "parallel-adapt")


def grid(thresholds: Sequence[float], rules: Sequence[str], policies: Sequence[str],
         parallel_policies: Sequence[str] = ("sequential", "disagree", "fewest"),
         first_samples: Sequence[Optional[int]] = (None,), methods: Sequence[str] = GRID_METHODS) -> list[Candidate]:
    """The candidates of `methods`: eager-adapt for every theta x rule x policy, eager-parallel for every theta x
    rule x parallel policy (its first runs are eager-adapt's, its extra samples parallel-adapt's: both from the
    store), then parallel-adapt per parallel policy x first-run size (`first_samples`; fewest tops every prompt up
    to M first, so it runs with the default size only)."""
    out = []
    if "eager-adapt" in methods:
        out += [Candidate("eager-adapt", p, t, r) for t in thresholds for r in rules for p in policies]
    if "eager-parallel" in methods:
        out += [Candidate("eager-parallel", p, t, r) for t in thresholds for r in rules for p in parallel_policies]
    if "parallel-adapt" in methods:
        out += [Candidate("parallel-adapt", p, None, first_samples=f) for p in parallel_policies
                for f in (first_samples if p != "fewest" else (None,))]
    return out


def choose(results: Sequence[tuple[Candidate, EqualCost]]) -> Optional[tuple[Candidate, EqualCost]]:
    """The best candidate at no more than parallel's tokens (see the module docstring), or None."""
    affordable = [(c, e) for c, e in results if e.tokens_ratio <= 1.0]
    if not affordable:
        return None
    return max(affordable, key=lambda ce: (min(ce[1].pass_diff, ce[1].cons_diff),
                                           ce[1].pass_diff + ce[1].cons_diff, -ce[1].tokens_ratio))


def eval_toml(record: object) -> str:
    """``eval.KEY = value`` lines of a PresetEval (for a preset file or its user override); None is left out."""
    from dataclasses import asdict

    from eager_mlx.adaptive.calibrate import toml_value

    return "".join(f"eval.{k} = {toml_value(v)}\n" for k, v in asdict(record).items() if v is not None)


def write_preset_eval(name: str, record: object) -> Path:
    """Store `record` (a PresetEval) as preset `name`'s eval defaults in its user override, keeping the rest."""
    from eager_mlx.models.preset import get_preset, override_path

    get_preset(name)  # ModelError for an unknown preset
    path = override_path(name)
    kept = [ln for ln in (path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else [])
            if not ln.startswith("eval.")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(kept) + eval_toml(record), encoding="utf-8")
    return path



def run_frontier(loaded: object, dataset: object, base: object, candidates: Sequence[Candidate], out_dir: Path,
                 store_dir: Optional[Path], *, chat: bool = True,
                 progress: Optional[Callable[[str], Optional[Callable]]] = None) -> list[tuple[Candidate, EqualCost]]:
    """Parallel at M on `dataset`, then every candidate, each an eval run folder under `out_dir` (a folder already
    finished is read, a partial one resumed) through the run store; returns each candidate against parallel.
    `base` (an EvalSettings) holds M, sampling, max tokens, seed and rows. `progress(name)` is called as each
    run starts and may return that run's eval progress callback."""
    import dataclasses

    from eager_mlx.evaluation.equal_cost import equal_cost
    from eager_mlx.evaluation.evaluate import evaluate_model
    from eager_mlx.evaluation.rundir import MANIFEST, load_run, read_manifest

    def run(name: str, method: str, policy: str = "hit-m", threshold: Optional[float] = None,
            rule: str = "top2", first_samples: Optional[int] = None) -> list[dict]:
        folder = Path(out_dir) / name
        if (folder / MANIFEST).exists() and read_manifest(folder / MANIFEST).get("finished"):
            return load_run(folder)[1]
        eager = dataclasses.replace(base.eager, branch_rule=rule,
                                    threshold=base.eager.threshold if threshold is None else threshold)
        sched = dataclasses.replace(base.scheduler, method=method, policy=policy, threshold=eager.threshold,
                                    first_samples=first_samples)
        settings = dataclasses.replace(base, eager=eager, scheduler=sched)
        report = progress(name) if progress is not None else None
        return evaluate_model(loaded, dataset, settings, folder, chat=chat, store_dir=store_dir,
                              resume=(folder / MANIFEST).exists(), progress=report).records

    parallel = run("parallel", "parallel")
    return [(c, equal_cost(run(c.name, c.method, c.policy, c.threshold, c.branch_rule, c.first_samples), parallel))
            for c in candidates]
