"""Calibrate theta from the model's own token entropies (the paper sets it by hand per model).

``measure_entropies`` samples each prompt once without branching (threshold
1e9, M = 1) through the Engine and returns the per-token entropies (the same
top-K entropy the branch rule compares with theta). From the pooled tokens:

* ``threshold_for_rate(values, r)``: the smallest measured value theta with at
  most a fraction r of the tokens strictly above it (sorted descending, theta
  is the value at position floor(r * n)). r is the *branching rate*: the
  fraction of a row's tokens that would trigger a branch while its prompt is
  below M.
* ``threshold_for_percentile(values, p)``: numpy's linear-interpolated p-th
  percentile.

``--threshold auto`` (solve, eval) uses the preset's calibrated value when
``eager-mlx calibrate --write-preset`` stored one, otherwise calibrates on the
run's own prompts at ``DEFAULT_RATE``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from eager_mlx.config import EagerConfig, EngineConfig
from eager_mlx.results import RunFinished

__all__ = [
    "DEFAULT_RATE",
    "Calibration",
    "measure_entropies",
    "threshold_for_rate",
    "threshold_for_percentile",
    "branching_rate",
    "entropy_summary",
    "calibrate",
    "plot_histogram",
    "write_preset_threshold",
    "stored_threshold",
    "auto_threshold",
    "auto_threshold_for",
]

DEFAULT_RATE = 0.02  # --threshold auto without a stored value: 2% of tokens above theta


@dataclass
class Calibration:
    """A recommended theta and the distribution it came from."""

    threshold: float
    target: str  # "rate 0.02" or "percentile 98"
    rate: float  # fraction of the measured tokens with entropy > threshold
    tokens: int
    prompts: int
    summary: dict[str, float] = field(default_factory=dict)
    entropies: list[float] = field(default_factory=list)  # pooled, for the plot


def measure_entropies(engine: Any, prompts: Sequence[list[int]], config: EagerConfig,
                      prefix: str = "calibrate") -> list[list[float]]:
    """Per prompt, the token entropies of one unbranched sample (runs on `engine`, which should be idle)."""
    cfg = dataclasses.replace(config, threshold=1e9, max_sequences=1, parallel=False, dynamic_threshold=False)
    ids = [f"{prefix}-{i}" for i in range(len(prompts))]
    for rid, tokens in zip(ids, prompts):
        engine.add(rid, tokens, cfg)
    out: dict[str, list[float]] = {}
    while len(out) < len(ids) and engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished) and ev.request_id in ids:
                out[ev.request_id] = [e for s in ev.result.sequences for e in s.entropies]
    return [out[rid] for rid in ids]


def threshold_for_rate(values: Sequence[float], rate: float) -> float:
    """Theta with at most `rate` of the values strictly above it (see the module docstring)."""
    if not values:
        raise ValueError("no entropies measured")
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    desc = sorted(values, reverse=True)
    return float(desc[int(rate * len(desc))])


def threshold_for_percentile(values: Sequence[float], percentile: float) -> float:
    """The percentile-th percentile of the values (linear interpolation)."""
    if not values:
        raise ValueError("no entropies measured")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), percentile))


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


def calibrate(engine: Any, prompts: Sequence[list[int]], config: EagerConfig, *,
              rate: Optional[float] = None, percentile: Optional[float] = None) -> Calibration:
    """Measure the prompts' entropies and recommend theta for `rate` (default DEFAULT_RATE) or `percentile`."""
    if rate is not None and percentile is not None:
        raise ValueError("give a target rate or a percentile, not both")
    per_prompt = measure_entropies(engine, prompts, config)
    values = [e for es in per_prompt for e in es]
    if percentile is not None:
        theta, target = threshold_for_percentile(values, percentile), f"percentile {percentile:g}"
    else:
        rate = DEFAULT_RATE if rate is None else rate
        theta, target = threshold_for_rate(values, rate), f"rate {rate:g}"
    return Calibration(theta, target, branching_rate(values, theta), len(values), len(prompts),
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
               label=f"theta = {cal.threshold:.3f} ({cal.rate:.1%} of tokens above)")
    ax.set_xlabel("token entropy (nats)")
    ax.set_ylabel("tokens")
    ax.set_title(title or f"{cal.tokens} tokens of {cal.prompts} prompts, {cal.target}")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_preset_threshold(name: str, cal: Calibration, source: str = "") -> Path:
    """Store theta as the preset's user override (``~/.cache/eager-mlx/presets/NAME.toml``); returns the path."""
    from eager_mlx.models.preset import get_preset, override_path

    get_preset(name)  # raises ModelError for an unknown preset
    path = override_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.write_text(
        f"# written by `eager-mlx calibrate` on {when}: {cal.target}, {cal.rate:.4f} of {cal.tokens} tokens "
        f"of {cal.prompts} prompts above theta{f' ({source})' if source else ''}\n"
        f"threshold = {cal.threshold!r}\n",
        encoding="utf-8",
    )
    return path


def stored_threshold(preset: Any) -> Optional[float]:
    """The calibrated theta stored for this preset, or None (no preset or never calibrated)."""
    from eager_mlx.models.preset import preset_override

    if preset is None:
        return None
    value = preset_override(preset.name).get("threshold")
    return None if value is None else float(value)


def auto_threshold(engine: Any, prompts: Sequence[list[int]], config: EagerConfig, preset: Any) -> tuple[float, str]:
    """``--threshold auto``: the preset's stored calibration, else calibrate on `prompts` at DEFAULT_RATE.

    Returns (theta, where it came from).
    """
    stored = stored_threshold(preset)
    if stored is not None:
        return stored, f"calibrated value stored for preset {preset.name}"
    cal = calibrate(engine, prompts, config)
    return cal.threshold, f"calibrated now on {cal.prompts} prompt(s), {cal.tokens} tokens, {cal.target}"


def auto_threshold_for(loaded: Any, prompts: Sequence[list[int]], config: EagerConfig, *,
                       seed: int = EngineConfig.seed) -> tuple[float, str]:
    """``--threshold auto`` for a LoadedModel: an engine is made only when the preset stores no theta."""
    engine = None
    if stored_threshold(loaded.preset) is None:
        engine = loaded.engine(EngineConfig(max_rows=max(1, min(16, len(prompts))), seed=seed), token_events=False)
    return auto_threshold(engine, prompts, config, loaded.preset)
