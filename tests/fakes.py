"""Test doubles: a byte-level tokenizer and tiny random mlx-lm models."""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import scaled_dot_product_attention

__all__ = ["ByteTokenizer", "MarkovModel", "ScriptedModel", "tiny_model"]


class _ByteDetokenizer:
    def __init__(self, tok: "ByteTokenizer"):
        self._tok = tok
        self.reset()

    def reset(self):
        self.tokens: list[int] = []
        self.text = ""
        self.offset = 0

    def add_token(self, token: int) -> None:
        self.tokens.append(token)
        self.text = self._tok.decode(self.tokens)

    def finalize(self) -> None:
        pass


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is EOS, 257 '</think>'; the rest decode to ''."""

    EOS = 256
    THINK_END = 257

    def __init__(self, vocab_size: int = 300):
        self.vocab_size = vocab_size
        self.eos_token_ids = {self.EOS}
        self.eos_token_id = self.EOS

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens) -> str:
        out, raw = [], bytearray()
        for t in tokens:
            if t < 256:
                raw.append(t)
            else:
                out.append(raw.decode("utf-8", "replace"))
                raw = bytearray()
                out.append("</think>" if t == self.THINK_END else "")
        out.append(raw.decode("utf-8", "replace"))
        return "".join(out)

    @property
    def detokenizer(self) -> _ByteDetokenizer:
        return _ByteDetokenizer(self)


def tiny_model(kind: str = "llama", vocab_size: int = 300, seed: int = 0, layers: int = 2) -> nn.Module:
    """A small random mlx-lm model (fp32) of the given architecture."""
    mx.random.seed(seed)
    common = dict(
        model_type=kind,
        hidden_size=64,
        num_hidden_layers=layers,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    if kind == "llama":
        from mlx_lm.models import llama as arch
    elif kind == "qwen3":
        from mlx_lm.models import qwen3 as arch

        common.update(head_dim=16, rope_theta=10000.0)
    elif kind == "qwen2":
        from mlx_lm.models import qwen2 as arch
    else:
        raise ValueError(kind)
    model = arch.Model(arch.ModelArgs.from_dict(common))
    mx.eval(model.parameters())
    return model


def _attention(layer, batch: int, length: int) -> None:
    """Write a cache entry and attend like a real layer (the engine routes it; the output is unused)."""
    kv = mx.zeros((batch, 1, length, 2))
    keys, values = layer.update_and_fetch(kv, kv)
    scaled_dot_product_attention(kv, keys, values, cache=layer, scale=1.0, mask=None)


class ScriptedModel(nn.Module):
    """A fake model whose next-token distribution depends only on the generation step.

    `schedule` maps a generation step (0 = first generated token) to a kind:
    "high" (near-uniform over 20 tokens, entropy ~ln 20), "mid" (near-uniform over 8,
    ~ln 8), "think" (the end-of-thinking token), "eos", "nan" (NaN logits); any other step is "low"
    (almost surely 'x'). In "high"/"mid" steps top-1 is 'a' and top-2 is 'b'.
    """

    LOW, TOP1, TOP2 = ord("x"), ord("a"), ord("b")

    def __init__(self, prompt_len: int, schedule: dict[int, str], vocab_size: int = 300):
        super().__init__()
        self.prompt_len = prompt_len
        self.schedule = schedule
        self.vocab_size = vocab_size
        self.layers = [None]  # make_prompt_cache builds one KVCache

    @classmethod
    def logits_for(cls, kind: str, vocab_size: int = 300) -> mx.array:
        row = [-30.0] * vocab_size
        if kind in ("high", "mid"):
            width = 20 if kind == "high" else 8
            for i in range(width):
                row[cls.TOP1 + i] = 5.0 - 1e-3 * i
        elif kind == "think":
            row[ByteTokenizer.THINK_END] = 30.0
        elif kind == "eos":
            row[ByteTokenizer.EOS] = 30.0
        elif kind == "nan":  # a model whose numerics failed (e.g. float16 overflow)
            row = [float("nan")] * vocab_size
        else:
            row[cls.LOW] = 30.0
        return mx.array(row)

    def __call__(self, inputs: mx.array, cache=None):
        batch, length = inputs.shape
        layer = cache[0]
        offset = layer.offset
        _attention(layer, batch, length)
        if isinstance(offset, int):  # prefill: only the last position matters
            steps = [offset + length - self.prompt_len] * batch
        else:
            steps = [int(o) - self.prompt_len + 1 for o in offset.tolist()]
        rows = [self.logits_for(self.schedule.get(s, "low"), self.vocab_size) for s in steps]
        return mx.broadcast_to(mx.stack(rows)[:, None, :], (batch, length, self.vocab_size))


class MarkovModel(nn.Module):
    """A fake model whose next-token logits depend only on the token fed: a Markov chain.

    Unlike ScriptedModel it works with prompts of any length batched together (every row's
    logits are its own). `random(seed)` draws a chain over the letters 'a'..'z' with
    per-token entropies spread around 1-3 nats, some EOS mass after every letter, and
    '!' always followed by EOS (a prompt ending in '!' finishes at its first token).
    """

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = mx.array(table.astype(np.float32))
        self.vocab_size = table.shape[1]
        self.layers = [None]  # make_prompt_cache builds one KVCache

    @classmethod
    def random(cls, seed: int = 0, vocab_size: int = 300, eos: float = -2.0) -> "MarkovModel":
        rng = np.random.default_rng(seed)
        table = np.full((vocab_size, vocab_size), -30.0)
        letters = np.arange(ord("a"), ord("z") + 1)
        scale = rng.uniform(0.2, 3.0, size=(vocab_size, 1))
        table[:, letters] = rng.normal(size=(vocab_size, len(letters))) * scale
        table[:, ByteTokenizer.EOS] = eos + rng.normal(size=vocab_size)
        table[ord("!")] = -30.0
        table[ord("!"), ByteTokenizer.EOS] = 30.0
        return cls(table)

    def __call__(self, inputs: mx.array, cache=None):
        batch, length = inputs.shape
        _attention(cache[0], batch, length)
        return self.table[inputs]


class ChatTokenizer(ByteTokenizer):
    """Bytes, with a chat template that ends every message with END (an eos id, like <|im_end|>)."""

    END = 258
    chat_template = "<role>content END"

    def __init__(self):
        super().__init__()
        self.eos_token_ids = {self.EOS, self.END}

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **kwargs):
        out = []
        for m in messages:
            out += self.encode(f"<{m['role']}>{m['content']}") + [self.END]
        return out + (self.encode("<assistant>") if add_generation_prompt else [])


class FakeLoaded:
    """Stands in for `eager_mlx.models.LoadedModel` in CLI tests: `make_engine(config, token_events)` builds
    each engine (recorded in `made`), prompts go through `encode(text)`."""

    def __init__(self, make_engine, encode, *, preset=None, name: str = "fake", tokenizer=None):
        self.make_engine, self._encode = make_engine, encode
        self.preset, self.name, self.tokenizer = preset, name, tokenizer
        self.path = Path(__file__)  # what the run store's key digests: the fake models are this file's code
        self.made: list = []  # (EngineConfig, token_events, engine)

    def engine(self, config=None, *, token_events: bool = True, preempt: bool = False):
        from eager_mlx.config import EngineConfig

        config = config or EngineConfig()
        engine = self.make_engine(config, token_events)
        self.made.append((config, token_events, engine))
        return engine

    def check_memory(self, rows: int, max_tokens: int) -> None:
        """A scripted engine keeps no KV cache: any size fits."""

    def encode(self, prompt, *, chat: bool = True, system=None, template_args=None) -> list[int]:
        return self._encode(prompt)


def patch_load(monkeypatch, loaded) -> list:
    """Make `eager_mlx.load` return `loaded`; returns the list of model refs it was asked for."""
    import eager_mlx

    asked: list = []

    def load(ref=None, progress=None):
        asked.append(ref)
        loaded.name = ref or loaded.name
        return loaded

    monkeypatch.setattr(eager_mlx, "load", load)
    return asked
