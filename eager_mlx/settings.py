"""One settings schema: every user-facing setting is declared once, on its config dataclass.

A config field made with `setting(...)` carries its help, range and CLI flag in
the field's metadata. From that one declaration come:

* validation (`validate` on any such dataclass, `check` for one raw value: one-line
  `SettingError` messages that name the setting);
* the click options of `solve`, `eval`, `calibrate` and `serve` (cli/options.py);
* the server's request parsing (eager_mlx/server/requests.py);
* the settings table in docs/settings.md (`markdown_table`, kept equal by a test).

A setting's `key` is its name everywhere: the click parameter, the JSON key of a
request and the keyword of `eager_mlx.config_for`. Settings marked `preset=True`
default to the model preset's value (threshold, temperature, top_p, think_end).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

__all__ = ["Setting", "SettingError", "setting", "settings_of", "check", "validate", "build", "markdown_table"]

_META = "eager_setting"


class SettingError(ValueError):
    """A setting has a bad value; the message is one line and names the setting."""


@dataclass(frozen=True)
class Setting:
    """What one config field accepts, and how it is shown."""

    key: str  # flat name: click parameter, JSON key, config_for keyword
    field: str  # the dataclass field it fills
    type: type  # int, float, bool, str or tuple (a repeatable string)
    default: Any
    help: str
    flags: tuple[str, ...]  # CLI spellings, the first is the documented one
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False
    choices: Optional[tuple[str, ...]] = None
    preset: bool = False  # the default comes from the model preset
    optional: bool = False  # None is a valid value (off)
    size: bool = False  # a byte count; the CLI also takes 512MB, 2GB

    @property
    def flag(self) -> str:
        return self.flags[0]

    def describe_range(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        shown = (lambda v: str(int(v))) if self.type is int else (lambda v: f"{v:g}")
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {shown(self.lo)}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {shown(self.hi)}"
        return ", ".join(p for p in (lo, hi) if p)


def setting(default: Any, help: str, *, key: Optional[str] = None, flags: tuple[str, ...] = (),
            lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False,
            choices: Optional[tuple[str, ...]] = None, preset: bool = False, optional: bool = False,
            size: bool = False) -> Any:
    """A dataclass field that is a user-facing setting (see the module docstring)."""
    meta = dict(key=key, flags=flags, help=help, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, choices=choices,
                preset=preset, optional=optional, size=size)
    return dataclasses.field(default=default, metadata={_META: meta})


def _type_of(f: dataclasses.Field) -> type:
    if f.default is not None:
        return type(f.default)
    text = f.type if isinstance(f.type, str) else str(f.type)  # e.g. "Optional[float]" or "str | None"
    for name, t in (("tuple", tuple), ("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text.startswith((name, f"Optional[{name}")):
            return t
    raise TypeError(f"setting {f.name}: cannot tell its type from {text!r}")


def settings_of(cls: type) -> Iterator[Setting]:
    """The settings declared on a config dataclass, in field order."""
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        key = meta["key"] or f.name
        flags = meta["flags"] or ("--" + key.replace("_", "-"),)
        yield Setting(key=key, field=f.name, type=_type_of(f), default=f.default, help=meta["help"],
                      flags=tuple(flags), lo=meta["lo"], hi=meta["hi"], lo_open=meta["lo_open"],
                      hi_open=meta["hi_open"], choices=meta["choices"], preset=meta["preset"],
                      optional=meta["optional"], size=meta["size"])


def _fail(s: Setting, what: str, value: Any) -> SettingError:
    shown = repr(value) if isinstance(value, str) else value
    return SettingError(f"{s.key} must be {what}, got {shown}")


def check(s: Setting, value: Any) -> Any:
    """`value` if it is valid for `s` (ints are accepted for floats), else SettingError."""
    if value is None:
        if s.optional or s.preset:
            return None
        raise _fail(s, "given", None)
    if s.type is tuple:
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
            raise _fail(s, "a string or a list of non-empty strings", value)
        return tuple(items)
    if s.type is bool:
        if not isinstance(value, bool):
            raise _fail(s, "true or false", value)
        return value
    if s.type is str:
        if not isinstance(value, str):
            raise _fail(s, "a string", value)
        if s.choices and value not in s.choices:
            raise _fail(s, "one of " + ", ".join(s.choices), value)
        return value
    numeric = (int,) if s.type is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise _fail(s, "an integer" if s.type is int else "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(s, "a finite number", value)
    if s.lo is not None and not (value > s.lo if s.lo_open else value >= s.lo):
        raise _fail(s, s.describe_range(), value)
    if s.hi is not None and not (value < s.hi if s.hi_open else value <= s.hi):
        raise _fail(s, s.describe_range(), value)
    return s.type(value)


def validate(config: Any) -> None:
    """Check every setting field of a config dataclass instance; SettingError names the first bad one."""
    for s in settings_of(type(config)):
        check(s, getattr(config, s.field))


def build(cls: type, values: dict[str, Any], **fixed: Any) -> Any:
    """An instance of `cls` from flat setting values (missing or None: the default), plus `fixed` fields."""
    kwargs = dict(fixed)
    for s in settings_of(cls):
        value = values.get(s.key)
        if value is not None:
            kwargs[s.field] = value
    return cls(**kwargs)


def markdown_table(groups: dict[str, type]) -> str:
    """The settings of each group (title -> config class) as one markdown table."""
    lines = ["| setting | CLI | default | range | what it does |", "|---|---|---|---|---|"]
    for title, cls in groups.items():
        for s in settings_of(cls):
            default = "the preset's" if s.preset else ("off" if s.default is None else repr(s.default))
            flags = ", ".join(f"`{f}`" for f in s.flags)
            lines.append(f"| `{s.key}` ({title}) | {flags} | {default} | {s.describe_range()} | {s.help} |")
    return "\n".join(lines) + "\n"
