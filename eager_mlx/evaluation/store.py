"""The run store: finished runs kept by content address, so a run asked for again is read, not generated.

A run is a pure function of its key: the model files' digest, the backend (device
and mlx version), the engine's context length, the prompt's tokens, the seed and
the id its random key derives from, and every setting of the request (theta, M,
sampling, max tokens, stop and think settings, branch rule, ...). The key is
canonical JSON; its SHA-256 names the entry (``ROOT/ab/<sha>.json.gz``), and the
entry holds the key itself, checked on every read (a corrupt or colliding entry is
a miss, never a wrong result).

Parallel samples are kept one per entry (their key has the sample's index in its
stream and no M or theta): parallel sampling in rounds (``parallel-adapt``) then
reads the samples a ``parallel`` run of the same prompts made, and the reverse.
Only runs that are pure functions of their key are stored: not ones where a branch
was skipped for rows or memory, nor runs stopped by an online monitor (timing).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from eager_mlx.config import EagerConfig
from eager_mlx.results import RunResult, SequenceResult

__all__ = ["STORE_FORMAT", "RunStore", "model_digest", "backend_name", "default_store_dir", "same_in_format_3"]

STORE_FORMAT = 3  # bump when a change to the engine or the sampler changes what a key produces
# (2: exact top-p nucleus; 3: no infinite Gumbel noise at the largest hash)
_PARALLEL_FIELDS = ("entropy_top_k", "full_entropy", "max_tokens", "stop", "sampling")  # all a sample depends on


def default_store_dir() -> Path:
    """`runs/` under the package cache (``$EAGER_MLX_CACHE`` or ~/.cache/eager-mlx)."""
    from eager_mlx.packages import cache_root

    return cache_root() / "runs"


def backend_name() -> str:
    """The device and mlx version: results are only reused on the backend that made them."""
    import mlx.core as mx

    return f"{mx.default_device()} mlx {mx.__version__}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DIGESTS = "eager-mlx.sha256"  # models.digests.DIGESTS, not imported: the store does not load the models package


def model_digest(folder: Path, cache: Optional[Path] = None) -> str:
    """SHA-256 over a model folder's files (names and contents; a single file: its own). With `cache` (a JSON
    file), a folder whose files have the same names, sizes and modification times as last time is not read again."""
    folder = Path(folder).resolve()
    files = [folder] if folder.is_file() else sorted(  # not the digest list conversion writes (models/digests.py)
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != DIGESTS)
    stamp = [[p.name if p == folder else str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
             for p in files]
    known: dict = {}
    if cache is not None and cache.exists():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    entry = known.get(str(folder))
    if entry and entry.get("stamp") == stamp:
        return entry["digest"]
    h = hashlib.sha256()
    for (name, _, _), p in zip(stamp, files):
        h.update(f"{name}\0{_sha256_file(p)}\n".encode())
    digest = h.hexdigest()
    if cache is not None:
        known[str(folder)] = {"stamp": stamp, "digest": digest}
        _write_atomic(cache, json.dumps(known).encode())
    return digest


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class RunStore:
    """Finished runs of one model on one backend, under `root`; `replayed` / `stored` count this session's."""

    root: Path
    model: str  # model_digest of the model's files (or any id that changes with them)
    backend: str = field(default_factory=backend_name)
    replayed: int = 0
    stored: int = 0
    migrated: int = 0  # format-2 entries found drawn the same by format 3 (see same_in_format_3)

    def key(self, *, prompt: list[int], seed: int, key_id: str, config: EagerConfig, context: Optional[int],
            sequence: Optional[int] = None) -> dict[str, Any]:
        """A run's key; with `sequence`, the key of parallel sample `sequence` of `key_id`'s stream."""
        settings = asdict(config)
        if sequence is not None:
            settings = {k: settings[k] for k in _PARALLEL_FIELDS}
        key = {"format": STORE_FORMAT, "model": self.model, "backend": self.backend, "context": context,
               "prompt": hashlib.sha256(json.dumps(prompt).encode()).hexdigest(), "seed": seed, "key_id": key_id,
               "sequence": sequence, "settings": settings}
        return json.loads(json.dumps(key))  # as it reads back from an entry (tuples become lists)

    def _path(self, key: dict) -> Path:
        sha = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return Path(self.root) / sha[:2] / f"{sha}.json.gz"

    def _read(self, key: dict) -> Optional[dict]:
        """The entry of `key`, or a format-2 entry that format 3 draws the same (kept under `key` from now on)."""
        entry = self._load(key)
        if entry is None and key["format"] == 3:
            old = self._load({**key, "format": 2})
            if old is not None and same_in_format_3(old, key):
                entry = {**old, "key": key}
                self._write(key, {k: v for k, v in old.items() if k != "key"})
                self.migrated += 1
        return entry

    def _load(self, key: dict) -> Optional[dict]:
        path = self._path(key)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, EOFError, ValueError):  # missing, torn or corrupt: a miss (it is written again)
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def _write(self, key: dict, body: dict) -> None:
        _write_atomic(self._path(key), gzip.compress(json.dumps({"key": key, **body}).encode(), mtime=0))

    def get(self, key: dict) -> Optional[RunResult]:
        """The stored result of a branching run, or None."""
        entry = self._read(key)
        if entry is None:
            return None
        self.replayed += 1
        return _run_result(entry["result"])

    def put(self, key: dict, result: RunResult) -> None:
        self._write(key, {"result": asdict(result)})
        self.stored += 1

    def get_parallel(self, keys: list[dict], request_id: str, threshold: float) -> Optional[RunResult]:
        """A parallel run assembled from its stored samples (`keys` in order), or None unless all are stored."""
        entries = [self._read(k) for k in keys]
        if not keys or any(e is None for e in entries):
            return None
        seqs = [dataclasses.replace(_sequence(e["sequence"]), index=i) for i, e in enumerate(entries)]
        self.replayed += 1
        from eager_mlx.answers import majority_vote

        return RunResult(request_id=request_id, sequences=seqs, prompt_tokens=entries[0]["prompt_tokens"],
                         generated_tokens=sum(e["generated"] for e in entries), answer=majority_vote(
                             s.answer for s in seqs), threshold=threshold,
                         elapsed_s=sum(e["elapsed_s"] for e in entries) / len(entries),
                         info={"branches_skipped_full": 0, "branches_skipped_memory": 0, "parallel": True})

    def put_parallel(self, keys: list[dict], result: RunResult) -> bool:
        """Store a parallel run's samples one by one (they are independent: each is its own key's function).
        A run whose tokens cannot be split by sample (one entropy per generated token) is not stored: False."""
        if len(keys) != len(result.sequences) or sum(len(s.entropies) for s in result.sequences) != \
                result.generated_tokens:
            return False
        for k, s in zip(keys, result.sequences):
            self._write(k, {"sequence": asdict(s), "generated": len(s.entropies), "prompt_tokens": result.prompt_tokens,
                            "elapsed_s": result.elapsed_s})
        self.stored += 1
        return True


# Token ids below this cover any vocabulary (the largest in use: 262,144); an id past the model's is never drawn.
_ANY_TOKEN = 1 << 20


def same_in_format_3(entry: dict, key: dict) -> bool:
    """Whether a stored format-2 parallel sample is what format 3 draws for `key`. Format 2's noise was infinite
    where a token's hash had its top 24 bits set (sampling.uniform), and that token won the draw; a sample none of
    whose tokens had it at its step, and at whose ending EOS step no token id had it, is drawn the same now.
    Branching runs are not checked (their branch steps' draws are not all recorded): they are drawn again."""
    if key.get("sequence") is None or "sequence" not in entry:
        return False
    if key["settings"]["sampling"]["temperature"] == 0:
        return True  # greedy: no noise
    from eager_mlx.engine.sampling import infinite_before_format_3, request_key, sequence_key

    row = sequence_key(request_key(key["seed"], key["key_id"]), key["sequence"])
    tokens = entry["sequence"]["token_ids"]
    if tokens and infinite_before_format_3([row] * len(tokens), range(len(tokens)), [[t] for t in tokens]).any():
        return False
    if entry["sequence"]["finish_reason"] == "eos":  # the EOS drawn at the last step is not recorded
        return not infinite_before_format_3([row], [len(tokens)], np.arange(_ANY_TOKEN, dtype=np.uint32)[None]).any()
    return True


def _sequence(d: dict) -> SequenceResult:
    return SequenceResult(**d)


def _run_result(d: dict) -> RunResult:
    return RunResult(**dict(d, sequences=[_sequence(s) for s in d["sequences"]]))
