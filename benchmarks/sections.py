"""Writing one script's section of BENCHMARKS.md, between its own markers, leaving the rest alone."""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_section"]


def write_section(path: Path, marker: str, body: str) -> None:
    """Replace the text between the two `marker` lines in `path` (append it if absent)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    head, _, tail = old.partition(marker)
    _, _, rest = tail.partition(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    rest = rest.lstrip("\n")  # rerunning must not pile up blank lines
    path.write_text(head.rstrip() + f"\n\n{marker}\n{body}\n{marker}\n" + (f"\n{rest}" if rest else ""))
