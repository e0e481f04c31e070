from eager_mlx.answers import extract_boxed, majority_vote


def test_extract_last_box_with_nested_braces():
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed {42}") == "42"


def test_missing_empty_or_cut_box_is_none():
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxed{}") is None
    assert extract_boxed(r"\boxed{12") is None


def test_majority_vote_ties_go_to_first_seen():
    assert majority_vote(["3", None, "4", "4", "3"]) == "3"
    assert majority_vote(["5", " 5", "6"]) == "5"
    assert majority_vote([None, None]) is None


def test_voted_index_is_the_first_sequence_with_the_voted_answer():
    from eager_mlx.answers import voted_index

    assert voted_index([None, "4", "3", " 4", "3", "4"]) == 1  # "4" x3 wins; sequence 1 is its first
    assert voted_index(["3", None, "4", "4", "3"]) == 0  # a tie goes to the answer seen first
    assert voted_index([None, "1/2", "1/2 "]) == 1
    assert voted_index([None, None]) is None
    assert voted_index([]) is None
    assert voted_index(["3", None, "4", "4", "3"], vote=" 4") == 2  # another vote (a weighted one)
    assert voted_index(["3"], vote="5") is None


def test_with_answers_extracts_and_votes_outside_the_engine():
    """The engine's results carry text only; with_answers fills each sequence's answer and the vote (a copy)."""
    from eager_mlx.answers import with_answers
    from eager_mlx.results import RunResult, SequenceResult

    texts = ["so \\boxed{4}", "hmm \\boxed{5}", "\\boxed{ 4 }", "no answer"]
    seqs = [SequenceResult(i, [], t, "eos", None, None, [], []) for i, t in enumerate(texts)]
    raw = RunResult("r", seqs, prompt_tokens=3, generated_tokens=9, answer=None, threshold=2.0, elapsed_s=0.1)
    voted = with_answers(raw)
    assert [s.answer for s in voted.sequences] == ["4", "5", "4", None] and voted.answer == "4"
    assert raw.answer is None and all(s.answer is None for s in raw.sequences)  # the engine's result is unchanged
    assert with_answers(raw, extract=lambda t: t[-1]).answer == "}"  # evaluation passes its own extractor
