"""Answer extraction (last \\boxed{...}) and majority voting."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

__all__ = ["extract_boxed", "normalize_answer", "majority_vote", "voted_index"]


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


def majority_vote(answers: Iterable[Optional[str]], weights: Optional[Sequence[float]] = None) -> Optional[str]:
    """The answer with the most votes (each `weights[i]`, default 1), compared normalised; ties go to the
    answer seen first; None answers do not vote."""
    answers = list(answers)
    if weights is None:
        weights = [1.0] * len(answers)
    elif len(weights) != len(answers):
        raise ValueError("answers and weights must have the same length")
    seen: dict[str, str] = {}
    totals: dict[str, float] = {}
    for a, w in zip(answers, weights):
        if a is None:
            continue
        key = normalize_answer(a)
        seen.setdefault(key, a)
        totals[key] = totals.get(key, 0.0) + w
    if not totals:
        return None
    best = max(totals.values())
    return next(seen[k] for k in seen if totals[k] == best)  # dicts keep insertion order: first seen wins ties


def voted_index(answers: Sequence[Optional[str]], vote: Optional[str] = None) -> Optional[int]:
    """Position of the first answer that agrees (normalised) with the vote, `majority_vote(answers)` unless
    given: the sequence whose text stands for the vote; None when no answer holds it."""
    vote = majority_vote(answers) if vote is None else vote
    if vote is None:
        return None
    key = normalize_answer(vote)
    return next((i for i, a in enumerate(answers) if a is not None and normalize_answer(a) == key), None)
