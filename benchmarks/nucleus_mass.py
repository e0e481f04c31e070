"""How often a real model's 256 most probable tokens hold less than top_p of the tempered distribution.

Run:  python benchmarks/nucleus_mass.py MODEL TEMPERATURE TOP_P [--problems 4] [--tokens 160]

Decodes the first GSM8K train problems with mlx-lm alone (plain sampling at TEMPERATURE, no top-p) and
counts the steps where the tempered mass of the 256 most probable tokens is below TOP_P: where eager-mlx's
candidates do not hold the nucleus, so the engine draws that row again over the whole vocabulary
(eager_mlx/engine/sampling.py, CUT). Prints one line: the count, the steps and the lowest mass seen.
"""
from __future__ import annotations

import argparse

import eager_mlx
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from eager_mlx.engine.sampling import CANDIDATES
from eager_mlx.evaluation.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("temperature", type=float)
    ap.add_argument("top_p", type=float)
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=160)
    args = ap.parse_args()
    loaded = eager_mlx.load(args.model)
    model, eos = loaded.model, set(loaded.tokenizer.eos_token_ids)
    data = load_dataset("gsm8k-train", limit=args.problems)
    steps = cut = 0
    lowest = 1.0
    for i in range(len(data)):
        cache = make_prompt_cache(model)
        x = mx.array(loaded.encode(data.prompt(i)))[None]
        key = mx.random.key(i)
        for _ in range(args.tokens):
            logits = model(x, cache=cache)[:, -1, :].astype(mx.float32) / args.temperature
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            mass = mx.exp(mx.topk(logprobs, CANDIDATES, axis=-1)).sum().item()
            steps, cut, lowest = steps + 1, cut + (mass < args.top_p), min(lowest, mass)
            key, sub = mx.random.split(key)
            token = mx.random.categorical(logprobs, key=sub)
            if token.item() in eos:
                break
            x = token[None]
    print(f"{args.model} temperature {args.temperature} top-p {args.top_p}: {cut} of {steps} steps with the "
          f"{CANDIDATES} most probable tokens below top-p; lowest mass {lowest:.4f}")


if __name__ == "__main__":
    main()
