"""Strict JSON reading for what users hand us (request bodies, data files): one rule everywhere.

Refused, as a `ValueError` with a one-line message: NaN and Infinity (not JSON), numbers too large
for a float, an object that repeats a key (which value would count is a guess), and nesting so
deep that Python's parser would overflow its stack (a RecursionError otherwise).
"""
from __future__ import annotations

import json
from typing import Any, Union

__all__ = ["loads", "TooDeep"]


class TooDeep(ValueError):
    """Arrays and objects nested past what the parser can follow."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (JSON numbers are finite)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is too large for a number")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r} in an object")
        out[key] = value
    return out


def loads(text: Union[str, bytes]) -> Any:
    """`json.loads` with the rules of the module docstring; every refusal is a ValueError."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique)
    except RecursionError:
        raise TooDeep("nested too deeply (arrays and objects inside each other)") from None
