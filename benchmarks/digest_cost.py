"""What checking a converted model costs at load: SHA-256 of every file of a model folder (models/digests.py).

    python benchmarks/digest_cost.py ~/.cache/eager-mlx/models/qwen2.5-coder-0.5b [--repeat 3]

Reads only. Prints the folder's size, each pass's time and rate; the first pass may read from disk, the later
ones from the page cache (what a second `solve` in a row sees).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from eager_mlx.models.digests import file_digests
from perf_env import header_lines, load_average


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = sum(p.stat().st_size for p in args.folder.rglob("*") if p.is_file())
    print("\n".join(header_lines("python benchmarks/digest_cost.py " + " ".join(sys.argv[1:]), load_average())))
    print(f"folder: {args.folder} ({size / 2**20:.0f} MiB)")
    for n in range(args.repeat):
        start = time.perf_counter()
        file_digests(args.folder)
        took = time.perf_counter() - start
        print(f"pass {n + 1}: {took:.2f} s, {size / 2**20 / took:.0f} MiB/s")


if __name__ == "__main__":
    main()
