"""Convert a GGUF file into an mlx-lm model directory, once and atomically.

The directory holds config.json, model.safetensors, tokenizer.json and
tokenizer_config.json, so `mlx_lm.load` can read it. Weights are dequantized:
F32 tensors stay float32, all others are stored as float16 (the dequantized
values of 4- to 8-bit weights lose nothing that matters in float16). The GGUF
type of every weight is kept in config.json under "eager_mlx" so that GPU
backends can quantize them again at load time (see models/loader.py).
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .digests import record_digests
from .errors import ModelError
from .gguf_model import open_gguf
from .gguf_tokenizer import write_tokenizer

__all__ = ["Progress", "convert_gguf", "is_converted"]

Progress = Callable[[str, int, int], None]  # (stage, done, total), e.g. ("convert", 12, 272)


def is_converted(path: Path) -> bool:
    """Whether `path` is a complete mlx-lm model directory."""
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: Progress | None = None,
                 source: str | None = None, *, replace: bool = False) -> Path:
    """Convert `gguf_path` into the mlx-lm directory `out_dir` (written to a temp folder, then renamed).

    Returns `out_dir`. An existing complete `out_dir` is reused as is, unless `replace` (a damaged one). `source`
    (default: the GGUF path) is recorded in config.json; the SHA-256 of every file in eager-mlx.sha256
    (models/digests.py), checked whenever the folder is loaded.
    """
    import mlx.core as mx

    out_dir = Path(out_dir)
    if is_converted(out_dir) and not replace:
        return out_dir
    gguf = open_gguf(gguf_path)
    config = gguf.config()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent) as tmp:
        tmp_dir = Path(tmp) / "model"
        tmp_dir.mkdir()
        write_tokenizer(gguf, tmp_dir)
        weights, types = {}, {}
        total = len(gguf.reader.tensors)
        for i, (name, array, qtype) in enumerate(gguf.weights()):
            dtype = np.float32 if qtype == "F32" else np.float16
            weights[name] = mx.array(array.astype(dtype, copy=False))
            types[name] = qtype
            if progress is not None:
                progress("convert", i + 1, total)
        config["eager_mlx"] = {"source": source or str(Path(gguf_path).resolve()), "gguf_types": types}
        eos = [gguf.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot")]
        if any(i is not None for i in eos):
            config["eos_token_id"] = sorted({int(i) for i in eos if i is not None})
        mx.save_safetensors(str(tmp_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
        del weights
        (tmp_dir / "config.json").write_text(json.dumps(config, indent=2))
        record_digests(tmp_dir)
        if out_dir.exists():  # an incomplete leftover from an older layout, or a damaged conversion
            out_dir.rename(Path(tmp) / "old")  # removed with the temp folder
        try:
            tmp_dir.rename(out_dir)
        except OSError as e:
            if not is_converted(out_dir):  # not a concurrent conversion that won the race
                raise ModelError(f"{out_dir}: cannot write converted model ({e})") from None
    return out_dir
