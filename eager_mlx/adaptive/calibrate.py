"""Calibrate theta for a target mean number of sequences per prompt (#S); the paper sets theta by hand.

1. ``measure_traces``: each prompt is sampled `samples` times without branching
   (parallel rows through the Engine); a trace is one sample's per-token
   entropies (the same top-K entropy the branch rule compares with theta) and
   the step where it closed its thinking section, if it did.
2. ``simulate_sequences``: EAGer runs replayed on the traces with the real branch
   rule (``BranchPolicy``). A run of a prompt starts on one of its traces; at a
   branch at step t the parent keeps its trace and the child continues from step
   t + 1 with the trace of a sample of the same prompt drawn at random among
   those still running at t + 1 (none: the child ends there). Deterministic for
   a seed (one generator per prompt and starting trace).
3. ``choose_threshold``: bisection over the measured entropy values for the
   smallest theta whose simulated mean #S is at most the target (default M / 4),
   then the shortest decimal that branches exactly like it.

``--threshold auto`` (solve, eval) uses the preset's calibrated theta (a user
override written by ``eager-mlx calibrate --write-preset``, else a shipped
preset's calibrated value), otherwise calibrates now on the run's own prompts.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from eager_mlx.config import EagerConfig, EngineConfig
from eager_mlx.engine.branching import BranchCandidate, BranchPolicy
from eager_mlx.results import RunFinished
from eager_mlx.settings import SettingError

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_SHARE",
    "Trace",
    "Calibration",
    "resolve_target",
    "write_traces",
    "read_traces",
    "measure_traces",
    "simulate_sequences",
    "mean_sequences",
    "choose_threshold",
    "branching_rate",
    "entropy_summary",
    "calibrate",
    "plot_histogram",
    "preset_calibration",
    "calibration_toml",
    "toml_value",
    "write_preset_threshold",
    "stored_threshold",
    "auto_threshold",
    "auto_threshold_for",
]

DEFAULT_SAMPLES = 4  # unbranched samples per prompt
DEFAULT_SHARE = 0.25  # default target: mean #S = M / 4 (at least 1)


@dataclass(frozen=True)
class Trace:
    """One unbranched sample: its token entropies and the step of the token that closed thinking."""

    entropies: tuple[float, ...]
    think_end: Optional[int] = None  # rows may not branch at steps after this one

    def think_done(self, step: int) -> bool:
        return self.think_end is not None and step > self.think_end


@dataclass
class Calibration:
    """The chosen theta, what it achieves in simulation, and the sample it came from."""

    threshold: float
    target_sequences: float
    mean_sequences: float  # simulated mean #S at threshold
    max_sequences: int  # M
    max_tokens: int
    prompts: int
    samples: int
    tokens: int
    seed: int
    rate: float  # fraction of the measured tokens with entropy > threshold
    summary: dict[str, float] = field(default_factory=dict)
    entropies: list[float] = field(default_factory=list)  # pooled, for the plot

    @property
    def target(self) -> str:
        return f"mean #S {self.target_sequences:g} at M={self.max_sequences}"


def resolve_target(target: Optional[float], max_sequences: int) -> float:
    """The target mean #S: `target` checked to lie in [1, M], or M / 4 (at least 1) when None."""
    if target is None:
        return max(1.0, max_sequences * DEFAULT_SHARE)
    if not 1 <= target <= max_sequences:
        raise SettingError(f"target mean #S must be in [1, M={max_sequences}], got {target:g}")
    return float(target)


def write_traces(path: Path, traces: Sequence[Sequence[Trace]]) -> None:
    """Save traces as JSON: per prompt, a list of {"entropies": [...], "think_end": int | null}."""
    rows = [[{"entropies": list(t.entropies), "think_end": t.think_end} for t in ts] for ts in traces]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rows), encoding="utf-8")


def read_traces(path: Path) -> list[list[Trace]]:
    """Traces saved by `write_traces`."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [[Trace(tuple(t["entropies"]), t["think_end"]) for t in ts] for ts in rows]


def _think_end_step(tokenizer: Any, token_ids: list[int], marker: Optional[str]) -> Optional[int]:
    """Index of the token whose decoding first contains `marker` (bisection on prefixes), or None."""
    if not marker or marker not in tokenizer.decode(token_ids):
        return None
    lo, hi = 0, len(token_ids) - 1  # the marker is in the prefix ending at hi
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if marker in tokenizer.decode(token_ids[: mid + 1]) else (mid + 1, hi)
    return hi


def measure_traces(engine: Any, prompts: Sequence[list[int]], config: EagerConfig, samples: int,
                   prefix: str = "calibrate",
                   progress: Optional[Callable[[int, int], None]] = None) -> list[list[Trace]]:
    """Per prompt, `samples` unbranched traces (parallel rows on `engine`, which should be idle).

    `progress(done, total)` is called as prompts finish.
    """
    cfg = dataclasses.replace(config, threshold=1e9, max_sequences=samples, parallel=True, dynamic_threshold=False)
    ids = [f"{prefix}-{i}" for i in range(len(prompts))]
    for rid, tokens in zip(ids, prompts):
        engine.add(rid, tokens, cfg)
    out: dict[str, list[Trace]] = {}
    while len(out) < len(ids) and engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished) and ev.request_id in ids:
                out[ev.request_id] = [
                    Trace(tuple(s.entropies), _think_end_step(engine.tokenizer, s.token_ids, cfg.think_end))
                    for s in ev.result.sequences
                ]
                if progress is not None:
                    progress(len(out), len(ids))
    return [out[rid] for rid in ids]


def _simulate_run(traces: Sequence[Trace], root: int, config: EagerConfig, rng: np.random.Generator) -> int:
    """#S of one simulated run of a prompt that starts on traces[root] (see the module docstring)."""
    policy = BranchPolicy(config)
    length = [min(len(t.entropies), config.max_tokens) for t in traces]
    rows = [(0, root)] if length[root] else []  # (sequence index, trace it follows)
    step = 0
    while rows and policy.num_sequences < config.max_sequences and not policy.closed:
        chosen = policy.decide([BranchCandidate(seq, traces[k].entropies[step], traces[k].think_done(step))
                                for seq, k in rows])
        running = [k for k in range(len(traces)) if length[k] > step + 1] if chosen else []
        first = policy.num_sequences - len(chosen)
        if running:  # else the children end at their fork token
            rows += [(first + j, running[int(rng.integers(len(running)))]) for j in range(len(chosen))]
        policy.end_step(bool(chosen))
        step += 1
        rows = [(seq, k) for seq, k in rows if length[k] > step]
    return policy.num_sequences


def simulate_sequences(traces: Sequence[Sequence[Trace]], config: EagerConfig, seed: int = 0) -> list[int]:
    """#S of one simulated run per (prompt, starting trace), prompt-major; `config` gives theta, M, max_tokens."""
    return [_simulate_run(ts, root, config, np.random.default_rng([seed, p, root]))
            for p, ts in enumerate(traces) for root in range(len(ts))]


def mean_sequences(traces: Sequence[Sequence[Trace]], config: EagerConfig, seed: int = 0) -> float:
    """The simulated mean #S over all runs."""
    counts = simulate_sequences(traces, config, seed)
    return sum(counts) / len(counts)


def _shortest_decimal(lo: float, hi: float) -> float:
    """The number with the fewest decimals in [lo, hi) (lo itself when none has up to 6)."""
    for digits in range(7):
        scale = 10 ** digits
        value = math.ceil(lo * scale) / scale
        if lo <= value < hi:
            return value
    return lo


def choose_threshold(traces: Sequence[Sequence[Trace]], config: EagerConfig, target: float,
                     seed: int = 0) -> tuple[float, float]:
    """(theta, simulated mean #S): the smallest theta whose mean #S is at most `target`, by bisection.

    Mean #S only changes at measured entropy values, so the search runs over them; it
    assumes mean #S does not rise with theta (child draws can make that approximate).
    """
    target = resolve_target(target, config.max_sequences)
    pooled = [e for ts in traces for t in ts for e in t.entropies[: config.max_tokens]]
    if not pooled:
        raise ValueError("no entropies measured")
    values = np.unique(np.maximum(0.0, [0.0] + pooled))  # theta >= 0
    cache: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in cache:
            cache[i] = mean_sequences(traces, dataclasses.replace(config, threshold=float(values[i])), seed)
        return cache[i]

    lo, hi = -1, len(values) - 1  # at(hi) <= target: nothing is above the largest value
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at(mid) <= target else (mid, hi)
    upper = float(values[hi + 1]) if hi + 1 < len(values) else math.inf
    return _shortest_decimal(float(values[hi]), upper), at(hi)


def branching_rate(values: Sequence[float], threshold: float) -> float:
    """Fraction of the values strictly above threshold."""
    return sum(v > threshold for v in values) / len(values) if values else 0.0


def entropy_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, percentiles and max of the entropies, plus the rates above 1, 2 and 2.5 nats."""
    a = np.asarray(values, dtype=np.float64)
    out = {"mean": float(a.mean()), "max": float(a.max())}
    out.update({f"p{p}": float(np.percentile(a, p)) for p in (50, 90, 95, 99)})
    out.update({f"rate>{t:g}": branching_rate(values, t) for t in (1.0, 2.0, 2.5)})
    return out


def calibrate(engine: Any, prompts: Sequence[list[int]], config: EagerConfig, *, samples: int = DEFAULT_SAMPLES,
              target_sequences: Optional[float] = None, seed: int = 0,
              traces: Optional[list[list[Trace]]] = None) -> Calibration:
    """Measure `samples` traces per prompt (or use `traces`) and choose theta for the target mean #S.

    `config` gives M (max_sequences), max_tokens, sampling and the branch rule's options;
    the target defaults to M / 4 (`resolve_target`).
    """
    target = resolve_target(target_sequences, config.max_sequences)  # fail before sampling
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if traces is None:
        traces = measure_traces(engine, prompts, config, samples)
    theta, mean = choose_threshold(traces, config, target, seed)
    values = [e for ts in traces for t in ts for e in t.entropies]
    return Calibration(theta, target, mean, config.max_sequences, config.max_tokens, len(traces),
                       max(len(ts) for ts in traces), len(values), seed, branching_rate(values, theta),
                       entropy_summary(values), values)


def plot_histogram(cal: Calibration, path: Path, title: str = "") -> None:
    """PNG histogram of the measured entropies with theta drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.hist(cal.entropies, bins=60, color="#4c72b0")
    ax.set_yscale("log")
    ax.axvline(cal.threshold, color="#c44e52", linestyle="--",
               label=f"theta = {cal.threshold:g} ({cal.rate:.1%} of tokens above)")
    ax.set_xlabel("token entropy (nats)")
    ax.set_ylabel("tokens")
    ax.set_title(title or f"{cal.tokens} tokens of {cal.prompts} prompts, {cal.target}")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def preset_calibration(cal: Calibration, data: str, command: str) -> Any:
    """The preset record (``PresetCalibration``) of a calibration on `data`, made by `command`."""
    from eager_mlx.models.preset import PresetCalibration

    return PresetCalibration(data=data, prompts=cal.prompts, samples=cal.samples, max_tokens=cal.max_tokens,
                             max_sequences=cal.max_sequences, target_sequences=cal.target_sequences,
                             mean_sequences=round(cal.mean_sequences, 4), tokens=cal.tokens, seed=cal.seed,
                             date=date.today().isoformat(), command=command)


def toml_value(value: Any) -> str:
    """A TOML value: a quoted string, a float or an int."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(float(value)) if isinstance(value, float) else repr(value)


def calibration_toml(threshold: float, record: Any) -> str:
    """The preset lines: ``threshold = ...`` and one ``calibration.KEY = ...`` line per field."""
    lines = [f"threshold = {threshold!r}"]
    lines += [f"calibration.{k} = {toml_value(v)}" for k, v in dataclasses.asdict(record).items()]
    return "\n".join(lines) + "\n"


def write_preset_threshold(name: str, cal: Calibration, data: str, command: str) -> Path:
    """Store theta and its calibration record as preset `name`'s user override; returns the path."""
    from eager_mlx.models.preset import get_preset, override_path

    get_preset(name)  # raises ModelError for an unknown preset
    path = override_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = preset_calibration(cal, data, command)
    kept = [ln for ln in (path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else [])
            if ln.startswith("eval.")]  # the eval defaults (calibrate --objective frontier) stay
    path.write_text("# written by `eager-mlx calibrate`\n" + calibration_toml(cal.threshold, record) + "".join(kept),
                    encoding="utf-8")
    return path


def stored_threshold(preset: Any) -> Optional[float]:
    """The preset's calibrated theta (user override or shipped calibration), or None."""
    from eager_mlx.models.preset import preset_override

    if preset is None:
        return None
    if preset.calibration is not None or "threshold" in preset_override(preset.name):
        return float(preset.threshold)
    return None


def auto_threshold(engine: Any, prompts: Sequence[list[int]], config: EagerConfig, preset: Any,
                   seed: int = 0) -> tuple[float, str]:
    """``--threshold auto``: the preset's calibrated theta, else calibrate now on `prompts` (target M / 4).

    Returns (theta, where it came from).
    """
    stored = stored_threshold(preset)
    if stored is not None:
        rec = preset.calibration
        how = f"on {rec.data}, {rec.prompts} prompts x {rec.samples}" if rec is not None else "user override"
        return stored, f"calibrated value of preset {preset.name} ({how})"
    cal = calibrate(engine, prompts, config, samples=min(DEFAULT_SAMPLES, engine.max_rows), seed=seed)
    return cal.threshold, (f"calibrated now on {cal.prompts} prompt(s) x {cal.samples} samples, {cal.tokens} tokens, "
                           f"simulated mean #S {cal.mean_sequences:.2f} for {cal.target}")


def auto_threshold_for(loaded: Any, prompts: Sequence[list[int]], config: EagerConfig, *,
                       seed: int = EngineConfig.seed) -> tuple[float, str]:
    """``--threshold auto`` for a LoadedModel: an engine is made only when the preset stores no theta."""
    engine = None
    if stored_threshold(loaded.preset) is None:
        rows = min(16, DEFAULT_SAMPLES * max(1, len(prompts)))  # DEFAULT_SAMPLES rows per prompt
        engine = loaded.engine(EngineConfig(max_rows=rows, seed=seed), token_events=False)
    return auto_threshold(engine, prompts, config, loaded.preset, seed=seed)
