"""Sharding an evaluation over processes and machines with MLX's distributed layer.

`mlx.launch` starts one process per rank (`mx.distributed.init()` tells each its
rank and the world size). Rank r evaluates the prompts i with i % size == r and
writes a normal run directory at RUN_DIR/rank-r (with ``shard.json``: rank, size
and the whole dataset's size and hash). `load_merged(RUN_DIR)` reads the rank
directories back as one run: prompt indices are mapped back to the whole
dataset's (local j of rank r is j * size + r) and the manifest describes the
whole dataset. On several machines, each writes its rank folders locally: copy
them into one RUN_DIR before `eager-mlx report`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from eager_mlx.evaluation.data import Dataset
from eager_mlx.evaluation.evaluate import EvalError, load_run

__all__ = ["Shard", "SHARD_FILE", "current_shard", "shard_run", "rank_dirs", "load_merged", "barrier"]

SHARD_FILE = "shard.json"


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    size: int = 1


def current_shard() -> Shard:
    """This process's rank and the world size (0 of 1 when not started by mlx.launch)."""
    import mlx.core as mx

    group = mx.distributed.init()
    return Shard(group.rank(), group.size())


def barrier() -> None:
    """Wait until every rank gets here."""
    import mlx.core as mx

    mx.eval(mx.distributed.all_sum(mx.array(1.0)))


def shard_run(run_dir: Optional[Path], dataset: Dataset, shard: Shard) -> tuple[Path, Dataset]:
    """This rank's run directory and prompts; with one rank, `run_dir` and `dataset` as they are."""
    if shard.size == 1:
        return Path(run_dir), dataset
    if run_dir is None:
        raise ValueError("a sharded eval (mlx.launch) needs --out RUN_DIR, the same on every rank")
    mine = Path(run_dir) / f"rank-{shard.rank}"
    mine.mkdir(parents=True, exist_ok=True)
    info = {"rank": shard.rank, "size": shard.size, "dataset_size": len(dataset), "dataset_hash": dataset.hash}
    (mine / SHARD_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return mine, dataclasses.replace(dataset, examples=dataset.examples[shard.rank::shard.size])


def rank_dirs(run_dir: Path) -> list[Path]:
    """The rank-N folders of a sharded run, by rank ([] for a plain run)."""
    dirs = [d for d in Path(run_dir).glob("rank-*") if (d / SHARD_FILE).exists()]
    return sorted(dirs, key=lambda d: json.loads((d / SHARD_FILE).read_text())["rank"])


def load_merged(run_dir: Path) -> tuple[dict, list[dict]]:
    """The manifest and records of a run directory; a sharded run's ranks are merged into one run.

    Merged records carry ``rank`` and ``local_index`` (their index inside the rank's run).
    """
    dirs = rank_dirs(run_dir)
    if not dirs or (Path(run_dir) / "manifest.json").exists():
        return load_run(run_dir)
    infos = [json.loads((d / SHARD_FILE).read_text()) for d in dirs]
    size = infos[0]["size"]
    if sorted(i["rank"] for i in infos) != list(range(size)) or {i["size"] for i in infos} != {size}:
        have = ", ".join(str(i["rank"]) for i in infos)
        raise EvalError(f"{run_dir}: ranks {have} of {size}: copy every rank-N folder here first")
    manifest: dict = {}
    records: list[dict] = []
    finished = []
    for d, info in zip(dirs, infos):
        m, recs = load_run(d)
        finished.append(bool(m.get("finished")))
        if not manifest:
            manifest = json.loads(json.dumps(m))
            manifest["dataset"].update(size=info["dataset_size"], hash=info["dataset_hash"])
            manifest["shards"] = size
        for r in recs:
            records.append({**r, "index": r["index"] * size + info["rank"], "rank": info["rank"],
                            "local_index": r["index"]})
    manifest["finished"] = all(finished)
    return manifest, sorted(records, key=lambda r: r["index"])
