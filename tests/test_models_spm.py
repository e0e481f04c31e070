"""SentencePiece vocabularies from GGUF (Gemma, Llama 2, Mistral, Phi-3): the rebuilt tokenizer gives the ids
the sentencepiece library gives for the same pieces, after llama.cpp's split of the text at its control and
user-defined tokens (which it, and transformers, match in the raw text)."""
import random

import numpy as np
import pytest

from eager_mlx.models.gguf_model import GGUFModel
from eager_mlx.models.gguf_tokenizer import build_tokenizer, spm_merges


def sentencepiece_reference(tokens: list[str], scores: list[float], types: list[int], add_space_prefix: bool):
    """text -> ids: sentencepiece's BPE over a model made of these pieces, run on the parts of the text between
    control / user-defined tokens (longest first), as llama.cpp tokenizes."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    unk = types.index(2) if 2 in types else tokens.index("<unk>")  # (Gemma's GGUF marks <unk> as control)
    proto = pb.ModelProto()
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, score, 2 if i == unk else kind
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = unk
    spec = proto.normalizer_spec
    spec.name, spec.add_dummy_prefix, spec.escape_whitespaces, spec.remove_extra_whitespaces = \
        "identity", add_space_prefix, True, False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    special: dict[str, list[str]] = {}  # by first character, longest first
    for t in sorted((t for t, k in zip(tokens, types) if k in (3, 4) and t), key=len, reverse=True):
        special.setdefault(t[0], []).append(t)
    ids = {t: i for i, t in enumerate(tokens)}

    def encode(text: str) -> list[int]:
        out, i, start = [], 0, 0
        while i < len(text):
            hit = next((s for s in special.get(text[i], ()) if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            out += sp.encode(text[start:i]) if start < i else []
            out.append(ids[hit])
            i = start = i + len(hit)
        return out + (sp.encode(text[start:]) if start < len(text) else [])
    return encode


def _tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<start>", 0.0, 3), ("  ", 0.0, 4),
              ("\n", 0.0, 4)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    chars = list("▁abcdehilnorstuw")
    merged = ["▁t", "he", "▁the", "in", "▁a", "an", "▁an", "nd", "▁and", "er", "re", "▁w", "or", "▁wor", "ld",
              "▁world", "▁is", "ll", "ell", "hell", "▁hell", "▁hello", "st", "▁st", "▁sto", "ne", "▁stone"]
    pieces += [(c, -100.0 - i, 1) for i, c in enumerate(chars)]
    rng = np.random.default_rng(0)
    pieces += [(m, float(-rng.uniform(0, 50)), 1) for m in merged]
    return [p[0] for p in pieces], [p[1] for p in pieces], [p[2] for p in pieces]


def _spm_gguf(path, add_space_prefix: bool) -> GGUFModel:
    import gguf
    from gguf import GGUFReader

    tokens, scores, types = _tiny_vocab()
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFModel(path, GGUFReader(path))


def random_texts(seed: int, n: int, words: list[str]) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(words) for _ in range(rng.randint(1, 25))) for _ in range(n)]


@pytest.mark.parametrize("add_space_prefix", [False, True])
def test_ids_equal_sentencepiece(tmp_path, add_space_prefix):
    g = _spm_gguf(tmp_path / "spm.gguf", add_space_prefix)
    tokenizer, config = build_tokenizer(g)
    tokens, scores, types = _tiny_vocab()
    reference = sentencepiece_reference(tokens, scores, types, add_space_prefix)
    words = ["the", " ", "  ", "\n", "hello", " world", "stone", "é", "日", "😀", "x", "and", " is", "<start>", "\t"]
    texts = ["hello world", "the stone and the world", "a  b\nc", "wörld ☃"] + random_texts(1, 300, words)
    for text in texts:  # (with a space prefix, llama.cpp adds it after every special token too, as here)
        assert tokenizer.encode(text, add_special_tokens=False).ids == reference(text), repr(text)
    assert tokenizer.encode("hello").ids[0] == 1 and config["add_bos_token"]  # <s> first
    ids = tokenizer.encode("hello  world ☃", add_special_tokens=False).ids
    shown = "hello   world ☃" if add_space_prefix else "hello  world ☃"  # ("  " then " world", as llama.cpp)
    assert tokenizer.decode(ids) == shown  # byte fallback and the spaces come back


def test_merges_follow_the_merged_pieces_score():
    merges = spm_merges(["a", "b", "c", "ab", "bc", "abc"], [0, 0, 0, -5.0, -1.0, -2.0], [1] * 6)
    assert merges == [("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")]
