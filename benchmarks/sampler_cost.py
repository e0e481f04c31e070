"""What one sampling step costs over a batch of logits: eager-mlx's token statistics vs mlx-lm's sampler.

Run:  python benchmarks/sampler_cost.py [--repeats 9] [--no-noise-cut]

Random logits (B, vocab) at the two models' vocabulary sizes; each side samples one token per row
at temperature 0.6, without and with top-p (eager-mlx also computes entropy, top-2 and log-probs;
mlx-lm's side is what BatchGenerator does per step: log-probabilities, then its sampler). Prints the median
milliseconds per call of each side and their ratio. mlx-lm's top-p sorts the whole vocabulary;
eager-mlx takes the nucleus from each row's top candidates (eager_mlx/engine/sampling.py).
`--no-noise-cut` leaves the Gumbel noise's ~30 elementwise ops to mx.compile's own split (fastmath.materialize
off), to compare with the default in another process (compiled graphs are cached per process).
"""
from __future__ import annotations

import argparse
import time

import eager_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core on Linux)
import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

from eager_mlx.config import SamplingConfig
from eager_mlx.engine import fastmath
from eager_mlx.engine.sampling import RowSampling, token_stats

VOCABS = {"smollm2-135m": 49152, "qwen2.5-coder-0.5b": 151936}


def median_ms(fn, repeats: int) -> float:
    fn()  # compile / warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no-noise-cut", action="store_true", help="fastmath.materialize off (before anything compiles)")
    args = ap.parse_args()
    if args.no_noise_cut:
        fastmath.materialize = lambda x: x
    print("| vocabulary (model) | B | sampling | eager-mlx ms | mlx-lm ms | mlx-lm / eager-mlx |")
    print("|---|---|---|---|---|---|")
    for name, vocab in VOCABS.items():
        for rows in (8, 32):
            logits = mx.random.normal((rows, vocab), key=mx.random.key(0)) * 3
            seeds = mx.arange(rows).astype(mx.uint32)
            mx.eval(logits)
            for top_p in (1.0, 0.95):
                ours = RowSampling.from_configs([SamplingConfig(temperature=0.6, top_p=top_p)] * rows)
                theirs = make_sampler(temp=0.6, top_p=top_p)
                a = median_ms(lambda: mx.eval(token_stats(logits, ours, seeds)), args.repeats)
                b = median_ms(lambda: mx.eval(theirs(logits - mx.logsumexp(logits, axis=-1, keepdims=True))),
                              args.repeats)
                setting = "temperature 0.6" + (f", top-p {top_p}" if top_p < 1.0 else "")
                print(f"| {vocab} ({name}) | {rows} | {setting} | {a:.1f} | {b:.1f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
