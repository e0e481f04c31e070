"""Generated arithmetic for SmolLM2-135M (the default model), from reasoning-gym's basic_arithmetic.

Two terms of 1-2 digits, + and -, no negation or parentheses: the level a 135M model solves sometimes, so an
adaptive budget has something to buy. A train split (calibration) and a test split (evaluation) with no question
in common (the space is small: test questions also in train are dropped).

Run (reasoning-gym is only needed here, not by eager-mlx):
    python -m venv /tmp/rg && /tmp/rg/bin/pip install reasoning-gym==0.1.25
    /tmp/rg/bin/python benchmarks/make_arithmetic.py benchmarks/data
"""
import json
import sys
from pathlib import Path

import reasoning_gym

CONFIG = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"), allow_parentheses=False,
              allow_negation=False)
SPLITS = {"arith-train.jsonl": (200, 1), "arith-test.jsonl": (100, 2)}  # file: (size, seed)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for name, (size, seed) in SPLITS.items():
        rows: list[dict] = []
        for x in reasoning_gym.create_dataset("basic_arithmetic", size=20 * size, seed=seed, **CONFIG):
            if x["question"] not in seen and len(rows) < size:
                rows.append({"question": x["question"], "answer": x["answer"]})
                seen.add(x["question"])
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{out / name}: {len(rows)} problems, none in an earlier split or twice")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/data"))
