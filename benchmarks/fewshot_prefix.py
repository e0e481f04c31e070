"""Few-shot GSM8K with and without the prefix cache: the same `eager-mlx eval --fewshot N` run twice, the
exemplars prefilled once vs before every question.

Run:  python benchmarks/fewshot_prefix.py [--limit 50] [--fewshot 8] [-M 4] [--max-tokens 256] [--out BENCHMARKS.md]

Reports the prompt tokens each run prefilled against the least possible (the exemplar turns once, plus each
question's own tokens), both wall times and their ratio, and whether the two runs wrote the same records
(timing fields aside). The runs go one after the other into RUN_ROOT/cache and RUN_ROOT/plain, both with
--no-store (from the run store the second run would replay the first's runs instead of computing them); a
side whose folder already holds a finished run is read, not run again.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import eager_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core on Linux, as the eval runs do)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_env import header_lines, load_average  # noqa: E402
from sections import write_section  # noqa: E402

MARKER = "<!-- fewshot_prefix.py -->"
TIMING = {"elapsed_s", "wall_s", "t_done", "tokens_per_s"}


def _timeless(x):
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items() if k not in TIMING}
    return [_timeless(v) for v in x] if isinstance(x, list) else x


def _records(run: Path) -> list:
    return sorted(_timeless([json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]),
                  key=lambda r: r["index"])


def least_prefill(model: str, fewshot: int, limit: int) -> tuple[int, int]:
    """(the exemplar turns' tokens, the least prompt tokens the run can prefill: those once + each question's own)."""
    import eager_mlx
    from eager_mlx.evaluation.data import load_dataset

    loaded = eager_mlx.load(model)
    data = load_dataset("gsm8k", fewshot=fewshot, limit=limit)
    shared = len(loaded.tokenizer.apply_chat_template(data.prompt(0)[:-1], tokenize=True))
    total = sum(len(loaded.encode(data.prompt(i))) for i in range(len(data)))
    return shared, shared + total - len(data) * shared


def run(args: argparse.Namespace, out: Path, cache: bool) -> float:
    cmd = [str(Path(sys.executable).parent / "eager-mlx"), "eval", "--model", args.model, "--data", "gsm8k",
           "--fewshot", str(args.fewshot), "--limit", str(args.limit), "--method", "parallel", "-M", str(args.M),
           "--max-tokens", str(args.max_tokens), "--no-store", "--out", str(out)] + \
        ([] if cache else ["--no-prefix-cache"])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    if manifest.get("finished"):
        return manifest["wall_s"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--fewshot", type=int, default=8)
    ap.add_argument("-M", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--runs", type=Path, default=Path("runs/fewshot-prefix"), help="RUN_ROOT")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    load_before = load_average()
    wall = {name: run(args, args.runs / name, name == "cache") for name in ("cache", "plain")}
    manifests = {n: json.loads((args.runs / n / "manifest.json").read_text()) for n in wall}
    shared, least = least_prefill(args.model, args.fewshot, args.limit)
    stats = {n: m["prefix_cache"] for n, m in manifests.items()}
    same = _records(args.runs / "cache") == _records(args.runs / "plain")
    rows = ["| prefix cache | prompt tokens prefilled | / least possible | eval wall time (s) |",
            "|---|---|---|---|"]
    for n in wall:
        rows.append(f"| {'on' if n == 'cache' else 'off (--no-prefix-cache)'} | {stats[n]['tokens_prefilled']:,} | "
                    f"{stats[n]['tokens_prefilled'] / least:.3f} | {manifests[n]['wall_s']:.0f} |")
    command = "python benchmarks/fewshot_prefix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        f"## {args.fewshot}-shot GSM8K with and without the prefix cache, {args.model} (benchmarks/fewshot_prefix.py)",
        "", *header_lines(command.strip(), load_before), "",
        f"{args.limit} test problems, parallel M={args.M}, {args.max_tokens} tokens at most, the exemplars "
        f"({shared} tokens of chat turns) before every question. Least possible prefill: the exemplars once plus "
        f"each question's own tokens = {least:,} tokens (targets: <= 1.05x of it; wall time >= 1.5x faster than "
        "without the cache; identical records).", "", *rows, "",
        f"Wall time ratio (off / on): {manifests['plain']['wall_s'] / manifests['cache']['wall_s']:.2f}x. "
        f"Records identical (timing fields aside): {'yes' if same else 'NO'}."])
    print(text)
    if args.out:
        write_section(args.out, MARKER, text)


if __name__ == "__main__":
    main()
