"""Answer extraction and grading."""
from __future__ import annotations

import threading
import time

import pytest

from eager_mlx.evaluation import grading as grading
from eager_mlx.evaluation.grading import ALL_FALLBACKS, extract_answer, grade


def test_extract_boxed_first_then_fallbacks():
    assert extract_answer(r"so \boxed{4} then \boxed{\frac{1}{2}}.") == (r"\frac{1}{2}", "boxed")
    assert extract_answer("We get 3 apples.\nThe final answer is $42$.") == ("42", "answer_is")
    assert extract_answer("The answer is: 7 dollars.") == ("7 dollars", "answer_is")
    assert extract_answer("work\n#### 1,234") == ("1,234", "answer_is")
    assert extract_answer("Answer: (B)") == ("(B)", "answer_is")
    assert extract_answer("3 + 4 = 7, so she has 7") == (None, "none")  # last number is opt-in
    assert extract_answer("3 + 4 = 7, so she has 7.", fallbacks=ALL_FALLBACKS) == ("7", "last_number")
    assert extract_answer("no digits here", fallbacks=ALL_FALLBACKS) == (None, "none")
    assert extract_answer(r"cut off \boxed{12", fallbacks=()) == (None, "none")
    # small models echo the instruction: an empty box is no answer, and neither is the sentence around it
    assert extract_answer(r"4 - 1 = 3" "\nThe final answer is within \\boxed{}.") == (None, "none")
    assert extract_answer(r"The answer is \boxed{}") == (None, "none")
    with pytest.raises(ValueError, match="unknown answer fallbacks"):
        extract_answer("x", fallbacks=("guess",))


@pytest.mark.parametrize(
    "pred,gold,ok",
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("1000", "1,000", True),
        ("\\$18", "18", True),
        ("72 \\text{ dollars}", "72", True),
        ("17", "18", False),
        ("0.5", "\\frac{1}{2}", True),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("x^2+1", "(x+1)^2", False),
        ("C", "C", True),
        ("(C)", "C", True),
        ("\\text{(C)}", "C", True),
        ("D", "C", False),
        (None, "3", False),
        ("", "3", False),
    ],
)
def test_grade(pred, gold, ok):
    assert grade(pred, gold) is ok


def test_grade_off_main_thread():
    results = {}

    def work():
        results["frac"] = grade("0.5", "\\frac{1}{2}")
        results["poly"] = grade("x^2+2x+1", "(x+1)^2")
        results["wrong"] = grade("\\sqrt{2}", "\\sqrt{3}")

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert results == {"frac": True, "poly": True, "wrong": False}


def test_bounded_times_out_off_main_thread(monkeypatch):
    seen = {}

    def slow_check(pred, gold, timeout):
        return grading._bounded(lambda: time.sleep(2) or True, timeout)

    monkeypatch.setattr(grading, "_math_verify", slow_check)

    def work():
        t0 = time.monotonic()
        seen["ok"] = grade("a+b", "b+a+0", timeout=0.2)
        seen["dt"] = time.monotonic() - t0

    t = threading.Thread(target=work)
    t.start()
    t.join(10)
    assert seen["ok"] is False and seen["dt"] < 1.5
