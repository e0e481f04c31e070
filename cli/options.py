"""Click options generated from the settings schema (eager_mlx/settings.py), and shared parsing helpers.

Every command that takes a setting takes it under the same flag, with the same
default and range: the option is made from the setting's one declaration.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import click

from eager_mlx.adaptive.confidence import ConfidenceConfig
from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.adaptive.options import AdaptiveOptions
from eager_mlx.config import EagerConfig, EngineConfig, SamplingConfig
from eager_mlx.settings import Setting, SettingError, check, settings_of

__all__ = ["GENERATION", "ADAPTIVE", "ENGINE", "setting_options", "pop_settings", "parse_size", "ThresholdType",
           "fail", "output_file", "output_dir", "writable_file", "writable_dir", "not_empty", "IntRange", "FloatRange",
           "FiniteFloatRange"]

GENERATION = (EagerConfig, SamplingConfig)
ADAPTIVE = (ConsensusConfig, AdaptiveOptions, ConfidenceConfig)
ENGINE = (EngineConfig,)


def fail(error: Exception) -> click.ClickException:
    """A domain error as a one-line click error (exit 2 for a bad setting: a usage error, else 1)."""
    out = click.ClickException(str(error).splitlines()[0] if str(error) else type(error).__name__)
    if isinstance(error, SettingError):
        out.exit_code = 2
    return out


def output_file(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: an output file's folder must exist and be writable, checked before any work."""
    return None if value is None else writable_file(value)


def not_empty(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: an option given as '' (or blanks) is refused, never read as "not given"."""
    if isinstance(value, str) and not value.strip():
        raise click.BadParameter(f"{value!r} is empty")
    return value


def writable_file(value: Any, param_hint: Optional[str] = None) -> Path:
    """`value` as a path to a file we can write (its folder exists and is writable); else click.BadParameter."""
    if not str(value).strip():  # Path("") is the current folder
        raise click.BadParameter(f"{str(value)!r} is empty", param_hint=param_hint)
    path = Path(value).expanduser()
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory", param_hint=param_hint)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        problem = "is not a directory" if folder.exists() else "does not exist"
        raise click.BadParameter(f"{folder} {problem}", param_hint=param_hint)
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.BadParameter(f"{path} is not writable", param_hint=param_hint)
    return path


def output_dir(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: a folder that exists and is writable, or can be created, checked before any work."""
    return None if value is None else writable_dir(value)


def writable_dir(value: Any, param_hint: Optional[str] = None) -> Path:
    """`value` as a folder that is writable or can be created; else click.BadParameter."""
    if not str(value).strip():  # Path("") is the current folder
        raise click.BadParameter(f"{str(value)!r} is empty", param_hint=param_hint)
    path = Path(value).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = "exists and is not a directory" if existing == path else f"cannot be created: {existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
    if problem:
        raise click.BadParameter(f"{path} {problem}", param_hint=param_hint)
    return path


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30}


def parse_size(text: Optional[str]) -> Optional[int]:
    """'512MB', '1.5G', '2048' -> bytes (binary units); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]?B?)\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a size such as 512MB or 2GB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


# Numbers on the command line are written as in JSON (and docs/settings.md): Python's int() and float() also
# take '1_000' and surrounding blanks, which a request body cannot, so they are refused here.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _number_text(value: Any, pattern: re.Pattern, what: str, param, ctx, type_: click.ParamType) -> None:
    if isinstance(value, str) and not pattern.fullmatch(value):
        type_.fail(f"{value!r} is not {what}", param, ctx)


class IntRange(click.IntRange):
    """click.IntRange (no bounds: any integer) taking decimal digits only, not '1_000'."""

    def convert(self, value: Any, param, ctx) -> Any:
        _number_text(value, _INT, "an integer", param, ctx, self)
        return super().convert(value, param, ctx)


class FloatRange(click.FloatRange):
    """click.FloatRange (no bounds: any number) taking decimal notation only, not '1_0.5'."""

    def convert(self, value: Any, param, ctx) -> Any:
        _number_text(value, _FLOAT, "a number", param, ctx, self)
        return super().convert(value, param, ctx)


class FiniteFloatRange(FloatRange):
    """FloatRange that also refuses nan and inf (nan passes every range comparison)."""

    def convert(self, value: Any, param, ctx) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class ThresholdType(click.ParamType):
    """A theta in nats, or "auto" (eager_mlx.adaptive.calibrate.auto_threshold)."""

    name = "THETA|auto"

    def convert(self, value: Any, param, ctx) -> Any:
        if value is None or isinstance(value, float) or value == "auto":
            return value
        if not _FLOAT.fullmatch(str(value)):
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
        return float(value)


def _checked(s: Setting) -> Callable:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == "auto" or value == ():
            return value
        try:
            return check(s, parse_size(value) if s.size else value)
        except SettingError as e:
            raise click.BadParameter(str(e)) from None
    return callback


def _option(s: Setting, auto_threshold: bool) -> Callable:
    shown = "the preset's" if s.preset else ("off" if s.optional else None)
    help_text = s.help + (f" [default: {shown}]" if shown else "")
    kwargs: dict[str, Any] = dict(help=help_text, callback=_checked(s))
    if s.type is bool:
        kwargs.update(is_flag=True, default=False)
    elif s.type is tuple:
        kwargs.update(multiple=True, default=())
    else:
        kwargs["default"] = None if (s.preset or s.optional) else s.default
        kwargs["show_default"] = shown is None
        if s.key == "threshold" and auto_threshold:
            kwargs["type"] = ThresholdType()
            kwargs["help"] += " 'auto': calibrated for the model (docs/beyond.md)."
        elif s.choices:
            kwargs["type"] = click.Choice(s.choices)
        elif s.size:
            kwargs["type"] = str
        else:
            kwargs["type"] = {int: IntRange(), float: FloatRange()}.get(s.type, s.type)
    return click.option(*s.flags, s.key, **kwargs)


def setting_options(*groups: type, exclude: Iterable[str] = (), only: Optional[Iterable[str]] = None,
                    auto_threshold: bool = False) -> Callable:
    """Decorator: one click option per setting of the config classes (all, or `only` these keys; minus `exclude`)."""
    skip, keep = set(exclude), None if only is None else set(only)
    settings = [s for cls in groups for s in settings_of(cls) if s.key not in skip and (keep is None or s.key in keep)]

    def decorate(f: Callable) -> Callable:
        for s in reversed(settings):
            f = _option(s, auto_threshold)(f)
        return f
    return decorate


def pop_settings(kwargs: dict[str, Any], *groups: type) -> dict[str, Any]:
    """Remove the settings of `groups` from a command's keyword arguments; not given (None, off, empty): None."""
    out = {}
    for cls in groups:
        for s in settings_of(cls):
            if s.key in kwargs:
                value = kwargs.pop(s.key)
                out[s.key] = None if value is False or value == () else value
    return out
