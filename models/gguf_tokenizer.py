"""Rebuild a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) from GGUF metadata.

Two kinds of vocabulary, as llama.cpp reads them:

* byte-level BPE (`tokenizer.ggml.model == "gpt2"`: SmolLM, Qwen2/2.5/3, DeepSeek-R1-Distill-Qwen,
  Llama 3): the pre-tokenizer follows `tokenizer.ggml.pre`, mirroring llama.cpp's rules;
* SentencePiece BPE (`"llama"`: Gemma 3, Llama 2, Mistral, Phi-3): pieces merged by score with byte
  fallback, built the way transformers converts a SentencePiece model (merges ordered by the merged
  piece's score), and checked against the sentencepiece library itself (tests/test_models_spm.py).

So token ids match the model's own tokenizer.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .errors import ModelError
from .gguf_model import GGUFModel

__all__ = ["build_tokenizer", "write_tokenizer"]

log = logging.getLogger(__name__)

_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # token types (SentencePiece's numbering, kept by llama.cpp)

_QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2_NAMES = ("gpt2", "default", "gpt-2")
_QWEN2_NAMES = ("qwen2", "deepseek-r1-qwen")  # llama.cpp gives DeepSeek-R1-Distill-Qwen the Qwen2 rules


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # digits one by one, then the GPT-2 regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT}.get(pre, _QWEN2_SPLIT if pre in _QWEN2_NAMES else None)
    if split is not None:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ])
    if pre not in _GPT2_NAMES:
        log.warning("unknown GGUF pre-tokenizer %r; using the GPT-2 rules", pre)
    return byte_level


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece's merging (the adjacent pair whose merged piece scores highest,
    leftmost first): every split of a normal or user-defined piece into two pieces of the vocabulary, ordered by
    the merged piece's score (transformers' SentencePieceExtractor)."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    found = []
    for i, piece in enumerate(tokens):
        if types[i] not in (_NORMAL, _USER_DEFINED):
            continue
        pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found += [(scores[i], left, right) for left, right in pairs]
    found.sort(key=lambda m: m[0], reverse=True)  # stable: ties keep the vocabulary's order
    return [(left, right) for _, left, right in found]


def _spm(gguf: GGUFModel, tokens: list[str], types: list[int]) -> Tokenizer:
    """A SentencePiece BPE vocabulary as a `tokenizers.Tokenizer` (normalizer, model, decoder; no pre-tokenizer)."""
    scores = [float(x) for x in gguf.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
    unk = gguf.get("tokenizer.ggml.unknown_token_id")
    bpe = models.BPE(vocab={tok: i for i, tok in enumerate(tokens)}, merges=spm_merges(tokens, scores, types),
                     unk_token=tokens[int(unk)] if unk is not None else None, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    prefix = bool(gguf.get("tokenizer.ggml.add_space_prefix", True))  # SentencePiece's add_dummy_prefix
    tokenizer.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                          + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tokenizer


def _bpe(gguf: GGUFModel, tokens: list[str]) -> Tokenizer:
    """A byte-level BPE vocabulary as a `tokenizers.Tokenizer`, pre-tokenized by `tokenizer.ggml.pre`."""
    merges: list[str] = gguf.get("tokenizer.ggml.merges") or []
    pre = str(gguf.get("tokenizer.ggml.pre", "default"))
    bpe = models.BPE(vocab={tok: i for i, tok in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges],
                     fuse_unk=False, byte_fallback=False)
    tokenizer = Tokenizer(bpe)
    if pre in _QWEN2_NAMES:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def build_tokenizer(gguf: GGUFModel) -> tuple[Tokenizer, dict]:
    """The `tokenizers.Tokenizer` and the tokenizer_config.json contents for a GGUF file."""
    kind = gguf.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise ModelError(f"{gguf.path}: tokenizer type {kind!r} is not supported (byte-level BPE 'gpt2', or "
                         "SentencePiece 'llama')")
    tokens: list[str] = gguf.get("tokenizer.ggml.tokens")
    types: list[int] = gguf.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    tokenizer = _bpe(gguf, tokens) if kind == "gpt2" else _spm(gguf, tokens, types)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                  for i, t in enumerate(types) if t == _CONTROL])
    tokenizer.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                          for i, t in enumerate(types) if t == _USER_DEFINED])

    def token(key: str) -> str | None:
        i = gguf.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos, pad, unk = token("bos"), token("eos"), token("padding"), token("unknown")
    add_bos = bool(gguf.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    processor = [processors.ByteLevel(trim_offsets=False)] if kind == "gpt2" else []
    if add_bos:
        processor.append(processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]))
    tokenizer.post_processor = processors.Sequence(processor)

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad or eos,
        **({"unk_token": unk} if unk is not None else {}),
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(gguf.get(f"{gguf.architecture}.context_length", 4096)),
    }
    template = gguf.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = str(template)
    return tokenizer, config


def write_tokenizer(gguf: GGUFModel, out_dir: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json for `gguf` into `out_dir`."""
    tokenizer, config = build_tokenizer(gguf)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
