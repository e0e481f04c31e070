"""Tokenizers rebuilt from GGUF metadata, loaded through mlx-lm's TokenizerWrapper."""
import pytest

from eager_mlx.models import load_model
from eager_mlx.models.gguf_model import open_gguf
from eager_mlx.models.gguf_tokenizer import build_tokenizer
from tiny_gguf import tiny_vocab, write_tiny_gguf


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


def _tokenizer(tmp_path, pre):
    tiny = write_tiny_gguf(tmp_path / f"{pre}.gguf", "qwen2", "F16", layers=1, pre=pre)
    return build_tokenizer(open_gguf(tiny.path))[0]


def _id(token: str) -> int:
    return tiny_vocab()[0].index(token)


@pytest.mark.parametrize("pre", ["smollm", "qwen2", "llama-bpe", "gpt2"])
def test_round_trip_and_merges(tmp_path, pre):
    tok = _tokenizer(tmp_path, pre)
    text = "the cat and in 2024, naïve café — ok?\n\n  tabs\tend"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.encode(" the and").ids == [_id("Ġthe"), _id("Ġand")]


@pytest.mark.parametrize("pre, pieces", [
    ("smollm", ["1", "2", "3", "4", "5"]),     # digits one by one
    ("qwen2", ["1", "2", "3", "4", "5"]),
    ("deepseek-r1-qwen", ["1", "2", "3", "4", "5"]),  # llama.cpp: the Qwen2 rules
    ("llama-bpe", ["12", "3", "4", "5"]),     # groups of up to three, then BPE
])
def test_digit_rules(tmp_path, pre, pieces):
    tok = _tokenizer(tmp_path, pre)
    assert tok.encode("12345").ids == [_id(p) for p in pieces]


def test_special_and_added_tokens(tmp_path):
    tok = _tokenizer(tmp_path, "qwen2")
    ids = tok.encode("<|im_start|>user\n<think>hi</think><|im_end|>").ids
    assert ids[0] == _id("<|im_start|>") and ids[-1] == _id("<|im_end|>")
    assert _id("<think>") in ids and _id("</think>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "user\n<think>hi</think>"


def test_mlx_lm_wrapper_chat_template_and_eos(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "t.gguf", "llama", "F16", layers=1)
    tokenizer = load_model(str(tiny.path)).tokenizer
    assert tokenizer.eos_token_ids == {_id("<|im_end|>")}
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "the 12"}], add_generation_prompt=True)
    assert tokenizer.decode(ids) == "<|im_start|>user\nthe 12<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.encode("the and", add_special_tokens=False) == [_id("t"), _id("he"), _id("Ġand")]
