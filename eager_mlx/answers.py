"""Answer extraction (last \\boxed{...}) and majority voting, done by the callers of the engine (its
results carry text only): `with_answers` fills a RunResult's answers and vote."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional, Sequence

from eager_mlx.results import RunResult

__all__ = ["extract_boxed", "normalize_answer", "majority_vote", "voted_index", "with_answers"]


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


def with_answers(result: RunResult, extract: Callable[[str], Optional[str]] = extract_boxed) -> RunResult:
    """A copy of `result` with each sequence's answer extracted from its text and the majority vote over them."""
    seqs = [dataclasses.replace(s, answer=extract(s.text)) for s in result.sequences]
    return dataclasses.replace(result, sequences=seqs, answer=majority_vote(s.answer for s in seqs))
