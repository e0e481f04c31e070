"""Answer extraction and grading: math-verify (gold first), numbers, multiple-choice letters.

``extract_answer`` takes the last ``\\boxed{}`` (``eager_mlx.answers.extract_boxed``)
and, when a completion has none, tries these fallbacks in order (each optional):

* ``answer_is``: the last "the (final) answer is X" / "Answer: X" / "#### X";
  X runs to the end of the line, a trailing period and ``$`` are dropped; an X holding an
  (empty or cut) ``\\boxed`` is the prompt's instruction echoed, not an answer.
* ``last_number``: the last number in the text. Off by default: on truncated
  reasoning it is a guess, and guesses inflate Pass@k over many samples.

``grade(pred, gold)`` decides, in order: multiple choice (gold a single letter
A-J: compare letters), plain numbers (both parse as numbers: equal within
1e-6 relative), then math-verify's ``verify(parse(gold), parse(pred))`` with both
wrapped in ``\\boxed{}``, then loose string equality (``normalize_answer``).

math-verify bounds its time with ``signal.alarm``, which only works on the main
thread. There we use it; on any other thread we switch its timeouts off and run
it in a daemon worker joined with the timeout instead (a timed-out check counts
as wrong; the worker is left to finish in the background).
"""
from __future__ import annotations

import math
import re
import threading
from fractions import Fraction
from typing import Callable, Optional, Sequence, TypeVar

from eager_mlx.answers import extract_boxed, normalize_answer

__all__ = ["DEFAULT_FALLBACKS", "ALL_FALLBACKS", "extract_answer", "grade"]

ALL_FALLBACKS = ("answer_is", "last_number")
DEFAULT_FALLBACKS = ("answer_is",)

_ANSWER_IS = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+)|^\s*(?:answer\s*:|####)\s*(.+)",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LETTER = re.compile(r"^\(?([A-J])\)?(?:[.:)]|\s|$)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")

T = TypeVar("T")


def extract_answer(text: str, fallbacks: Sequence[str] = DEFAULT_FALLBACKS) -> tuple[Optional[str], str]:
    """Return (answer, how) with how one of "boxed", "answer_is", "last_number", "none"."""
    unknown = set(fallbacks) - set(ALL_FALLBACKS)
    if unknown:
        raise ValueError(f"unknown answer fallbacks {sorted(unknown)}; choose from {ALL_FALLBACKS}")
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    for how in fallbacks:
        if how == "answer_is":
            matches = list(_ANSWER_IS.finditer(text))
            if matches:
                m = matches[-1]
                ans = (m.group(1) or m.group(2)).strip().rstrip(".").strip().strip("$").strip()
                if ans and "\\boxed" not in ans and "\\fbox" not in ans:  # "is within \\boxed{}": an echo
                    return ans, how
        elif how == "last_number":
            nums = _NUMBER.findall(text)
            if nums:
                return nums[-1].rstrip(","), how
    return None, "none"


def _letter(s: str) -> Optional[str]:
    s = re.sub(r"\\text(?:bf)?\{([^}]*)\}", r"\1", s).strip()
    m = _LETTER.match(s)
    return m.group(1) if m else None


def _number(s: str) -> Optional[float]:
    s = s.strip().replace("\\!", "").replace("\\$", "").replace("$", "").replace(" ", "")
    s = re.sub(r"\\(?:text|mathrm)\{[^}]*\}$", "", s)  # a trailing unit
    if s.endswith("\\%") or s.endswith("%"):
        return None  # percentages: leave to math-verify
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    try:
        return float(Fraction(s))
    except (ValueError, ZeroDivisionError):
        return None


def _bounded(fn: Callable[[], T], timeout: float) -> T:
    """Run fn in a daemon thread; raise TimeoutError if it takes longer than timeout seconds."""
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    worker = threading.Thread(target=work, daemon=True, name="eager-mlx-grade")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"math-verify took longer than {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _math_verify(pred: str, gold: str, timeout: float) -> bool:
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return "\\boxed{" + s + "}"

    if threading.current_thread() is threading.main_thread():
        secs = max(1, math.ceil(timeout))
        g = parse(wrap(gold), parsing_timeout=secs)
        p = parse(wrap(pred), parsing_timeout=secs)
        return bool(g and p and verify(g, p, timeout_seconds=secs))

    def check() -> bool:
        g = parse(wrap(gold), parsing_timeout=None)
        p = parse(wrap(pred), parsing_timeout=None)
        return bool(g and p and verify(g, p, timeout_seconds=None))

    return _bounded(check, timeout)


def grade(pred: Optional[str], gold: str, timeout: float = 5.0) -> bool:
    """True when the predicted answer matches the gold answer; safe on any thread."""
    if pred is None or not pred.strip():
        return False
    gold_letter = _letter(gold) if len(gold.strip()) <= 3 else None
    if gold_letter is not None and _number(gold) is None:
        return _letter(pred) == gold_letter
    a, b = _number(pred), _number(gold)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    try:
        if _math_verify(pred, gold, timeout):
            return True
    except Exception:  # noqa: BLE001 - timeouts and parser failures fall through to string equality
        pass
    return normalize_answer(pred) == normalize_answer(gold)
