"""Progress displays and option parsing shared by the commands."""
from __future__ import annotations

import re

import click

__all__ = ["ProgressBars", "parse_size"]


class ProgressBars:
    """Model fetch/convert progress: one tqdm bar per stage ("fetch ...", "convert"), on stderr."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        kind = stage.split()[0]
        if kind != self.stage:
            self.close()
            self.stage = kind
            self.bar = tqdm(total=total, desc=kind, unit="part" if kind == "fetch" else "tensor",
                            leave=True)
        if stage != kind:
            self.bar.set_postfix_str(stage[len(kind) + 1:])
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30}


def parse_size(text: str | None) -> int | None:
    """'512MB', '1.5G', '2048' -> bytes (binary units); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]?B?)\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a size such as 512MB or 2GB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])
