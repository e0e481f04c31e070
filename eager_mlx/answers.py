"""Answer extraction (last \\boxed{...}) and majority voting."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Optional

__all__ = ["extract_boxed", "normalize_answer", "majority_vote"]


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent or empty."""
    best = None
    for marker in ("\\boxed", "\\fbox"):
        start = text.rfind(marker)
        if start >= 0 and (best is None or start > best[0]):
            best = (start, marker)
    if best is None:
        return None
    i = best[0] + len(best[1])
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, begin = 0, i + 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:j].strip() or None  # an empty box is no answer
    return None  # unbalanced: the box was cut off


def normalize_answer(answer: str) -> str:
    """Loose normal form used for voting: lower case, no spaces, no trailing period."""
    return answer.lower().replace(" ", "").rstrip(".")


def majority_vote(answers: Iterable[Optional[str]]) -> Optional[str]:
    """Most common answer (normalised); ties go to the answer seen first. None answers are skipped."""
    seen: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for a in answers:
        if a is None:
            continue
        key = normalize_answer(a)
        seen.setdefault(key, a)
        counts[key] += 1
    if not counts:
        return None
    top = max(counts.values())
    for key, original in seen.items():  # dicts keep insertion order: first seen wins ties
        if counts[key] == top:
            return original
    return None
