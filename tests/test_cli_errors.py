"""Every bad input to the CLI: one table per surface (solve, eval, report, calibrate, data files).

Each row asserts the exit code (2: the command line is wrong; 1: something the
command read or ran failed), that the output ends in exactly one "Error: ..."
line holding the message, and that no exception escaped (CliRunner would hide
its traceback, so `result.exception` is checked). "{d}" in a row's arguments is
the test's temporary folder, which holds the files of `_files` and the run
directories of `_runs`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx.cli.main import cli
from eager_mlx.models import LoadedModel
from fakes import ByteTokenizer, FakeLoaded, patch_load, tiny_model
from test_evaluate import FakeEngine, adapt_script, encode

ROOT = os.geteuid() == 0  # root writes through permission bits: a chmod-ed folder is not read-only for it


def check(result, code: int, message: str) -> None:
    out = result.output
    assert result.exit_code == code, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, out
    assert message in errors[0], out
    assert out.rstrip().splitlines()[-1] == errors[0]


def _files(d: Path) -> None:
    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(4)]
    (d / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "afile").write_text("not a folder")
    (d / "adir").mkdir()
    (d / "held").mkdir()
    (d / "held" / "results.jsonl").write_text(json.dumps({"index": 0}) + "\n")


def _fill(args: list[str], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in args]


@pytest.fixture
def fake_eval(monkeypatch):
    """The scripted engine of tests/test_evaluate.py behind every model the CLI loads."""
    loaded = FakeLoaded(lambda config, events: FakeEngine(adapt_script, max_rows=config.max_rows), encode)
    loaded.asked = patch_load(monkeypatch, loaded)
    return loaded


@pytest.fixture(scope="module")
def tiny():
    return LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny")


# ---------------------------------------------------------------------------------------------- solve
SOLVE = [
    (["solve", ""], 2, "the question is empty"),
    (["solve", "  \n "], 2, "the question is empty"),
    (["solve", "-"], 2, "the question is empty"),  # empty stdin
    (["solve", "q", "-t", "nan"], 2, "threshold must be a finite number, got nan"),
    (["solve", "q", "--temperature", "nan"], 2, "temperature must be a finite number"),
    (["solve", "q", "--temperature", "inf"], 2, "temperature must be a finite number"),
    (["solve", "q", "--temperature", "-1"], 2, "temperature must be >= 0"),
    (["solve", "q", "--top-p", "1.5"], 2, "top_p must be > 0, <= 1"),
    (["solve", "q", "-M", "0"], 2, "max_sequences must be >= 1"),
    (["solve", "q", "--max-tokens", "0"], 2, "max_tokens must be >= 1"),
    (["solve", "q", "--threshold", "lots"], 2, "'lots' is neither a number nor 'auto'"),
    (["solve", "q", "--max-kv-memory", "12XB"], 2, "'12XB' is not a size"),
    (["solve", "q", "--view", "some"], 2, "Invalid value for '--view'"),
    (["solve", "q", "--consensus-abort"], 2, "consensus_abort needs a consensus rule"),
    (["solve", "q", "--html", "{d}/adir"], 2, "adir is a directory"),
    (["solve", "q", "--html", "{d}/nowhere/t.html"], 2, "nowhere does not exist"),
    (["solve", "q", "--html", "{d}/afile/t.html"], 2, "afile is not a directory"),
    (["solve", "q", "--bogus"], 2, "No such option '--bogus'"),
    (["solve", "q", "--model", "no-such-model-anywhere"], 1, "no-such-model-anywhere"),
    (["solve", "-", "--max-tokens", "4"], 1, "the prompt has 5000 tokens, the model's context is 4096"),
    (["solve", "hi", "--top-k", "4294967296"], 2, "top_k must be >= 0, <= 1048576, got 4294967296"),
    (["solve", "q", "--entropy-top-k", "4294967296"], 2, "entropy_top_k must be >= 2, <= 1048576"),
    (["solve", "q", "-M", "99999999999999999999"], 2, "max_sequences must be >= 1, <= 1024"),
    (["solve", "q", "--max-tokens", "9223372036854775808"], 2, "max_tokens must be >= 1, <= 1048576"),
    (["solve", "q", "--no-branch-window", "9223372036854775808"], 2, "no_branch_window must be >= 1, <= 1048576"),
    (["solve", "q", "--seed", "9223372036854775808"], 2, "seed must be >= -9223372036854775808, <= 9223372036854775807"),
    (["solve", "q", "--seed", "-9223372036854775809"], 2, "seed must be >= -9223372036854775808"),
    (["solve", "q", "-M", "1_0"], 2, "'1_0' is not an integer"),
    (["solve", "q", "--max-tokens", " 5"], 2, "' 5' is not an integer"),
    (["solve", "q", "--temperature", "1_0"], 2, "'1_0' is not a number"),
    (["solve", "q", "-t", "1_0.5"], 2, "'1_0.5' is neither a number nor 'auto'"),
    (["solve", "q", "--model", ""], 2, "Invalid value for '--model' / '-m': '' is empty"),
    (["solve", "q", "--model", "  "], 2, "'  ' is empty"),
    (["solve", "q", "--html", ""], 2, "Invalid value for '--html': '' is empty"),
]


@pytest.mark.parametrize("args,code,message", SOLVE)
def test_solve(tmp_path, monkeypatch, tiny, args, code, message):
    _files(tmp_path)
    asked = [] if "--model" in args else patch_load(monkeypatch, tiny)  # the real loader, for its error
    stdin = "x" * 5000 if "--max-tokens" in args else ""  # `solve -`: a question longer than the context
    check(CliRunner().invoke(cli, _fill(args, tmp_path), input=stdin), code, _fill([message], tmp_path)[0])
    if code == 2:
        assert not asked  # refused before the model loads


@pytest.mark.parametrize("args,stdin,message", [
    (["solve", "-"], b"\xff\xfe\x00\x01binary", "stdin is not UTF-8 text (byte 0xff at offset 0)"),
    (["solve", "-"], b"What is 2+2?\xc3", "stdin is not UTF-8 text (byte 0xc3 at offset 12)"),
    (["solve", "a\udcffb"], b"", "the question is not UTF-8 text (character 1)"),  # argv bytes that were not UTF-8
    (["solve", "q", "--system", "s\ud800"], b"", "the system message holds a lone surrogate '\\ud800' at character 1"),
])
def test_solve_refuses_what_is_not_text(monkeypatch, tiny, args, stdin, message):
    asked = patch_load(monkeypatch, tiny)
    check(CliRunner().invoke(cli, args, input=stdin), 2 if "--system" not in args else 1, message)
    assert not asked or "--system" in args  # the system message is checked where the prompt is encoded


def test_solve_speed_line_keeps_the_prompt_apart():
    """8 tokens over 11.1 s, 10.7 of them the prompt's (prefill and first-step compilation): the decode rate is
    the 7 tokens after the first over 0.4 s, not 0.7 tokens/s over the whole time."""
    from eager_mlx.cli.solve import _speed

    assert _speed(41, 8, 10.7, 11.1) == ("prompt 41 tokens in 10.70 s (3.8 tokens/s, first token included); "
                                         "decode 17.5 tokens/s (7 tokens in 0.40 s)")
    assert _speed(41, 1, 0.5, 0.5).endswith("decode -")


def test_solve_prints_the_speed_line(monkeypatch, tiny):
    patch_load(monkeypatch, tiny)
    res = CliRunner().invoke(cli, ["solve", "What is 2+2?", "--max-tokens", "6", "-t", "100", "--view", "quiet"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("speed:"))
    assert "prompt 12 tokens in " in line and "decode " in line
    res = CliRunner().invoke(cli, ["solve", "What is 2+2?", "--max-tokens", "6", "-t", "100", "--json"])
    out = json.loads(res.output)
    assert 0 < out["prompt_s"] <= out["elapsed_s"] and "tokens_per_s" not in out


def test_solve_reads_the_question_from_stdin(monkeypatch, tiny):
    patch_load(monkeypatch, tiny)
    res = CliRunner().invoke(cli, ["solve", "-", "--json", "--max-tokens", "4", "--threshold", "100"],
                             input="What is 2+2?\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["prompt_tokens"] == len(b"What is 2+2?\n")


# ----------------------------------------------------------------------------------------------- eval
EVAL = [  # every row but the last is refused before the model loads
    (["--out", "{d}/afile"], 2, "afile exists and is not a directory"),
    (["--out", "{d}/afile/run"], 2, "cannot be created: {d}/afile is a file"),
    (["--resume"], 2, "--resume needs --out RUN_DIR"),
    (["--resume", "--out", "{d}/fresh"], 1, "no manifest.json, nothing to resume"),
    (["--resume", "--out", "{d}/held"], 1, "manifest.json is missing, so the settings of its results.jsonl"),
    (["--out", "{d}/held"], 1, "already holds results"),
    (["--k", "0"], 2, "Invalid value for '--k'"),
    (["--limit", "0"], 2, "Invalid value for '--limit'"),
    (["-t", "nan"], 2, "threshold must be a finite number"),
    (["--threshold", "-inf"], 2, "threshold must be a finite number"),
    (["--temperature", "nan"], 2, "temperature must be a finite number"),
    (["--max-rows", "0"], 2, "max_rows must be >= 1"),
    (["-M", "0"], 2, "max_sequences must be >= 1"),
    (["--method", "beam"], 2, "Invalid value for '--method'"),
    (["--method", "parallel", "--token-budget", "100"], 2, "token budget applies to eager-adapt and eager only"),
    (["--token-budget", "-1"], 2, "Invalid value for '--token-budget'"),
    (["--consensus-abort"], 2, "consensus_abort needs a consensus rule"),
    (["--max-kv-memory", "0"], 2, "'0' is not a size"),
    (["--fallback", "guess"], 2, "Invalid value for '--fallback'"),
    (["--data", "{d}/missing.jsonl"], 1, "missing.jsonl: no such file"),
    (["--data", "gsm9k"], 1, "unknown dataset 'gsm9k'"),
    (["--answer-field", "label"], 1, "no answer field 'label'"),
    (["--template", "no placeholder"], 2, "Invalid value for '--template': the prompt template must contain {question}"),
    (["--out", ""], 2, "Invalid value for '--out': '' is empty"),
    (["--model", ""], 2, "Invalid value for '--model' / '-m': '' is empty"),
    (["--data", ""], 2, "Invalid value for '--data' / '-d': '' is empty"),
    (["--top-k", "1099511627776"], 2, "top_k must be >= 0, <= 1048576"),
    (["--max-rows", "5000"], 2, "max_rows must be >= 1, <= 1024"),
    (["--limit", "1_0"], 2, "'1_0' is not an integer"),
    (["--budget", "nan"], 2, "'nan' is not a finite number"),
    (["--budget", "0"], 2, "Invalid value for '--budget'"),
    (["--fewshot", "1_0"], 2, "'1_0' is not an integer"),
    (["--store", ""], 2, "Invalid value for '--store': '' is empty"),
    (["--store", "{d}/afile"], 2, "afile exists and is not a directory"),
    (["-M", "8", "--resume", "--out", "{d}/done"], 1, "cannot resume {d}/done: settings differ (settings.eager.max_sequences"),
]


@pytest.mark.parametrize("args,code,message", EVAL)
def test_eval(tmp_path, monkeypatch, fake_eval, args, code, message):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path / "adir")  # a refusal that failed would write here, not into the repository
    base = ["eval", "--data", str(tmp_path / "good.jsonl"), "-M", "4", "--method", "eager-adapt"]
    if "{d}/done" in args:  # a finished run to resume with other settings
        assert CliRunner().invoke(cli, base + ["--out", str(tmp_path / "done")]).exit_code == 0
        fake_eval.asked.clear()
    out = [] if "--out" in args or "--resume" in args else ["--out", str(tmp_path / "run")]
    check(CliRunner().invoke(cli, base + _fill(args, tmp_path) + out), code, _fill([message], tmp_path)[0])
    assert bool(fake_eval.asked) == ("{d}/done" in args)


@pytest.mark.skipif(ROOT, reason="running as root: permission bits do not stop root's writes, so a read-only "
                                 "folder cannot be made (the under-a-file rows cover the refusal)")
def test_eval_out_in_a_read_only_folder(tmp_path, fake_eval):
    _files(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = CliRunner().invoke(cli, ["eval", "--data", str(tmp_path / "good.jsonl"), "--out", str(ro / "run")])
    finally:
        ro.chmod(0o700)
    check(res, 2, f"cannot be created: {ro} is not writable")
    assert not fake_eval.asked


@pytest.mark.parametrize("seed", [-(2**63), 2**63 - 1])
def test_the_largest_values_run(monkeypatch, tiny, seed):
    """The caps are values the engine takes: the extreme seeds, and top-k larger than the vocabulary, run."""
    patch_load(monkeypatch, tiny)
    res = CliRunner().invoke(cli, ["solve", "q", "--json", "--max-tokens", "3", "--seed", str(seed), "--top-k",
                                   "1048576", "--entropy-top-k", "1048576", "-M", "2", "-t", "0"])
    assert res.exit_code == 0 and res.exception is None, res.output
    out = json.loads(res.output)
    assert out["config"]["sampling"]["top_k"] == 1048576 and out["generated_tokens"] > 0


# ---------------------------------------------------------------------------------------------- serve
SERVE = [  # all refused before the model loads
    (["--api-key", ""], {}, "'' is empty: give a key, or leave --api-key out to serve without one"),
    (["--api-key", "  "], {}, "'  ' is empty"),
    ([], {"EAGER_MLX_API_KEY": ""}, "EAGER_MLX_API_KEY is set but empty: unset it to serve without a key"),
    (["--idle-timeout", "nan"], {}, "'nan' is not a finite number"),
    (["--idle-timeout", "inf"], {}, "inf is not in the range 0<x<=86400"),
    (["--header-timeout", "0"], {}, "0.0 is not in the range 0<x<=86400"),
    (["--body-timeout", "-1"], {}, "is not in the range 0<x<=86400"),
    (["--model", ""], {}, "'' is empty"),
    (["--allow-host", ""], {}, "'' is not a host name"),
    (["--port", "8_080"], {}, "'8_080' is not an integer"),
    (["--top-k", "4294967296"], {}, "top_k must be >= 0, <= 1048576"),
    (["--seed", "18446744073709551616"], {}, "seed must be >= -9223372036854775808"),
    (["--chat-template-args", '{"a": 1, "a": 2}'], {}, "duplicate key 'a'"),
]


@pytest.mark.parametrize("args,env,message", SERVE)
def test_serve(monkeypatch, tiny, args, env, message):
    asked = patch_load(monkeypatch, tiny)
    monkeypatch.delenv("EAGER_MLX_API_KEY", raising=False)
    check(CliRunner().invoke(cli, ["serve", *args], env=env), 2, message)
    assert not asked


# --------------------------------------------------------------------------------------------- report
def _runs(d: Path, fake_eval) -> None:
    """A finished run `run`, and broken copies of it."""
    res = CliRunner().invoke(cli, ["eval", "--data", str(d / "good.jsonl"), "-M", "4", "--method", "eager-adapt",
                                    "--out", str(d / "run")])
    assert res.exit_code == 0, res.output
    variants = {
        "bad_manifest": lambda r: (r / "manifest.json").write_text('{"format": 1,\n  "model": '),
        "not_manifest": lambda r: (r / "manifest.json").write_text("[]\n"),
        "old_manifest": lambda r: (r / "manifest.json").write_text('{"format": 1}\n'),
        "bad_results": lambda r: (r / "results.jsonl").write_bytes(
            b"{oops\n" + (r / "results.jsonl").read_bytes()),
        "latin1_results": lambda r: (r / "results.jsonl").write_bytes(
            b'{"index": 9, "q": "caf\xe9"}\n' + (r / "results.jsonl").read_bytes()),
        "bad_trees": lambda r: (r / "trees.jsonl").write_text('{"request_id": "p0-r0", "tr\n{"request_id": 1}\n'),
        "trees_file": lambda r: (r / "trees").write_text("a file where the pages go"),
    }
    for name, spoil in variants.items():
        shutil.copytree(d / "run", d / name)
        spoil(d / name)


REPORT = [
    (["{d}/nothing", "--no-plot"], 1, "{d}/nothing: no manifest.json: not a run directory"),
    (["{d}/adir", "--no-plot"], 1, "not a run directory"),
    (["{d}/bad_manifest", "--no-plot"], 1, "{d}/bad_manifest/manifest.json:2: corrupt"),
    (["{d}/not_manifest", "--no-plot"], 1, "not_manifest/manifest.json: not an eager-mlx manifest"),
    (["{d}/old_manifest", "--no-plot"], 1, "old_manifest/manifest.json: not an eager-mlx manifest (no 'model')"),
    (["{d}/bad_results", "--no-plot"], 1, "{d}/bad_results/results.jsonl:1: corrupt record"),
    (["{d}/latin1_results", "--no-plot"], 1, "latin1_results/results.jsonl:1: corrupt record"),
    (["{d}/bad_trees", "--no-plot", "--html"], 1, "{d}/bad_trees/trees.jsonl:1: corrupt record"),
    (["{d}/trees_file", "--no-plot", "--html"], 2, "Invalid value for '--html': {d}/trees_file/trees exists and "
                                                   "is not a directory"),
    (["{d}/run", "--plot", "{d}/adir"], 2, "Invalid value for '--plot': {d}/adir is a directory"),
    (["{d}/run", "--plot", "{d}/nowhere/p.png"], 2, "{d}/nowhere does not exist"),
    (["{d}/run", "--plot", "{d}/afile/p.png"], 2, "{d}/afile is not a directory"),
    ([], 2, "Missing argument 'RUN_DIRS...'"),
]


@pytest.mark.parametrize("args,code,message", REPORT)
def test_report(tmp_path, fake_eval, args, code, message):
    _files(tmp_path)
    _runs(tmp_path, fake_eval)
    res = CliRunner().invoke(cli, ["report", *_fill(args, tmp_path)])
    check(res, code, _fill([message], tmp_path)[0])
    if code == 2:
        assert "Pass@k" not in res.output  # refused before the table was computed


# ------------------------------------------------------------------------------------------ calibrate
CALIBRATE = [
    (["--target-sequences", "nan"], 2, "'nan' is not a finite number"),
    (["--target-sequences", "0.5"], 2, "Invalid value for '--target-sequences'"),
    (["--target-sequences", "9"], 2, "target mean #S must be in [1, M=8], got 9"),
    (["--samples", "0"], 2, "Invalid value for '--samples'"),
    (["--samples", "20"], 2, "--samples 20 needs --max-rows >= 20 (got 16)"),
    (["--save-traces", "{d}/adir"], 2, "Invalid value for '--save-traces': {d}/adir is a directory"),
    (["--limit", "0"], 2, "Invalid value for '--limit'"),
    (["--temperature", "nan"], 2, "temperature must be a finite number"),
    (["--max-rows", "0"], 2, "max_rows must be >= 1"),
    (["--plot", "{d}/adir"], 2, "Invalid value for '--plot': {d}/adir is a directory"),
    (["--plot", "{d}/afile/h.png"], 2, "{d}/afile is not a directory"),
    (["--data", "{d}/missing.csv"], 1, "missing.csv: no such file"),
    (["--model", "no-such-model-anywhere"], 1, "no-such-model-anywhere"),
]


@pytest.mark.parametrize("args,code,message", CALIBRATE)
def test_calibrate(tmp_path, monkeypatch, tiny, args, code, message):
    _files(tmp_path)
    asked = [] if "--model" in args else patch_load(monkeypatch, tiny)
    base = ["calibrate"] + ([] if "--data" in args else ["--data", str(tmp_path / "good.jsonl")])
    check(CliRunner().invoke(cli, base + _fill(args, tmp_path)), code, _fill([message], tmp_path)[0])
    assert not asked


# ----------------------------------------------------------------------------------------- data files
DATA = [  # (file name, bytes, message): `eval --data FILE` refuses it, naming file and line
    ("latin1.jsonl", b'{"question": "a", "answer": "1"}\n\n{"question": "caf\xe9", "answer": "2"}\n',
     "latin1.jsonl:3: not UTF-8 text (byte 0xe9)"),
    ("latin1.csv", b"question,answer\nna\xefve,1\n", "latin1.csv:2: not UTF-8 text"),
    ("latin1.json", b'[\n {"question": "\xff", "answer": "1"}\n]', "latin1.json:2: not UTF-8 text"),
    ("broken.jsonl", b'{"question": "a", "answer": "1"}\n{"question": \n', "broken.jsonl:2: not valid JSON"),
    ("broken.json", b'[{"question": "a", "answer": "1"},\n', "broken.json:2: not valid JSON"),
    ("array.jsonl", b'{"question": "a", "answer": "1"}\n[1, 2]\n', "array.jsonl:2: expected an object"),
    ("noanswer.jsonl", b'{"question": "a", "answer": "1"}\n{"question": "b"}\n', "noanswer.jsonl:2: no answer"),
    ("noquestion.jsonl", b'{"question": "a", "answer": "1"}\n{"q": "b", "answer": "2"}\n',
     "noquestion.jsonl:2: no question field"),
    ("blank.jsonl", b'{"question": "a", "answer": "1"}\n{"question": "  ", "answer": "2"}\n',
     "blank.jsonl:2: empty question"),
    ("wide.csv", b"question,answer\na,1,extra\n", "wide.csv:2: more values than header columns"),
    ("deep.jsonl", b'{"question": "a", "answer": "1"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n",
     "deep.jsonl:2: not valid JSON (nested too deeply"),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "deep.json: not valid JSON (nested too deeply"),
    ("number.jsonl", b'{"question": 12345, "answer": "1"}\n', "number.jsonl:1: the question is not text (got int 12345)"),
    ("surrogate.jsonl", b'{"question": "a", "answer": "1"}\n{"question": "a\\ud800b", "answer": "2"}\n',
     "surrogate.jsonl:2: the question holds a lone surrogate '\\ud800' (at character 1)"),
    ("twice.jsonl", b'{"question": "a", "answer": "1", "answer": "2"}\n',
     "twice.jsonl:1: not valid JSON (duplicate key 'answer' in an object)"),
    ("nan.jsonl", b'{"question": "a", "answer": NaN}\n', "nan.jsonl:1: not valid JSON (NaN is not a JSON value"),
    ("object.json", b'{"a": 1, "b": 2}', "object.json: expected a list of objects"),
    ("empty.jsonl", b"\n\n", "empty.jsonl: the dataset is empty"),
    ("notes.txt", b"question: a", "notes.txt: unsupported file type"),
    ("folder.jsonl", None, "folder.jsonl: a directory, not a data file"),
]


@pytest.mark.parametrize("name,content,message", DATA)
def test_data_file(tmp_path, fake_eval, name, content, message):
    path = tmp_path / name
    path.mkdir() if content is None else path.write_bytes(content)
    res = CliRunner().invoke(cli, ["eval", "--data", str(path), "--out", str(tmp_path / "run")])
    check(res, 1, message)
    assert str(tmp_path) in res.output.splitlines()[-1]  # the file is named by its path
    assert not fake_eval.asked and not (tmp_path / "run").exists()


def test_data_file_with_a_byte_order_mark_is_read(tmp_path, fake_eval):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,answer\nWhat is 0+1?,1\n")
    res = CliRunner().invoke(cli, ["eval", "--data", str(path), "-M", "4", "--method", "eager-adapt", "--out",
                                    str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
