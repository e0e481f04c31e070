"""How often a request's sampled tokens differ when it runs alone vs batched with other prompts.

The engine's randomness is per sequence (a request's draws never depend on the batch), so any
difference comes from the backend's floating point: a matmul over B rows need not give bitwise
the logits it gives for one row. Each prompt runs once alone, then all prompts run together in
one engine (same seed, same request ids); sequences are compared token by token.

    .venv/bin/python benchmarks/batch_invariance.py --model tiny
    .venv/bin/python benchmarks/batch_invariance.py --model smollm2-135m --prompts 8 --max-tokens 48

Prints: prompts whose result differs, the differing token positions over all positions compared,
the first differing step of each, and the largest entropy difference over the steps before it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import eager_mlx  # noqa: F401  (preloads OpenBLAS on Linux before mlx is imported)
from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.results import RunFinished

PROMPTS = [
    "What is 17 * 23? Put the final answer in \\boxed{}.",
    "Name three primes.",
    "A train leaves at 3 pm and travels 120 km at 80 km/h. When does it arrive? Reason step by step.",
    "Why is the sky blue?",
    "Write a haiku about snow.",
    "If x + 3 = 10, what is x?",
    "List the planets of the solar system in order from the sun, with one fact about each.",
    "hi",
]


def _load(name: str):
    """(model, tokenizer, encode) for 'tiny' (a random 2-layer llama, byte tokens) or a preset name."""
    if name == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fakes import ByteTokenizer, tiny_model

        tok = ByteTokenizer()
        return tiny_model(), tok, tok.encode
    from eager_mlx.api import encode_prompt

    loaded = eager_mlx.load(name)
    return loaded.model, loaded.tokenizer, lambda text: encode_prompt(loaded.tokenizer, text)


def _run(model, tok, prompts: dict[str, list[int]], config: EagerConfig, seed: int) -> dict:
    engine = Engine(model, tok, max_rows=64, seed=seed)
    for rid, tokens in prompts.items():
        engine.add(rid, tokens, config)
    results = {}
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result
    return results


def compare(alone, batched) -> tuple[int, int, list[int], float]:
    """(positions compared, positions differing, first differing steps, max entropy diff before them)."""
    compared = differing = 0
    firsts, ent = [], 0.0
    for a, b in zip(alone.sequences, batched.sequences):
        n = max(len(a.token_ids), len(b.token_ids))
        diff = [i for i in range(n) if i >= min(len(a.token_ids), len(b.token_ids)) or a.token_ids[i] != b.token_ids[i]]
        compared, differing = compared + n, differing + len(diff)
        stop = diff[0] if diff else n
        firsts += diff[:1]
        ent = max([ent] + [abs(x - y) for x, y in zip(a.entropies[:stop], b.entropies[:stop])])
    if alone.num_sequences != batched.num_sequences:
        firsts.append(-1)
    return compared, differing, firsts, ent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny' or a preset name (smollm2-135m)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-sequences", "-M", type=int, default=1, help="1: plain sampling; more: EAGer trees")
    ap.add_argument("--threshold", type=float, default=2.0)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model, tok, encode = _load(args.model)
    prompts = {f"p{i}": encode(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS))) for i in range(args.prompts)}
    config = EagerConfig(threshold=args.threshold, max_sequences=args.max_sequences, max_tokens=args.max_tokens,
                         sampling=SamplingConfig(temperature=args.temperature))
    batched = _run(model, tok, prompts, config, args.seed)
    totals, differ, entropy = [0, 0], 0, 0.0
    for rid, tokens in prompts.items():
        alone = _run(model, tok, {rid: tokens}, config, args.seed)[rid]
        compared, differing, firsts, ent = compare(alone, batched[rid])
        totals[0], totals[1], entropy = totals[0] + compared, totals[1] + differing, max(entropy, ent)
        differ += bool(firsts)
        print(f"{rid}: {compared} positions, {differing} differ" + (f" (first at step {firsts})" if firsts else ""))
    print(f"model {args.model}, {args.prompts} prompts batched together vs alone, T={args.temperature}, "
          f"M={args.max_sequences}: {differ}/{args.prompts} prompts differ, {totals[1]}/{totals[0]} token positions "
          f"({totals[1] / max(totals[0], 1):.1%}); largest entropy difference before a divergence {entropy:.2e}")


if __name__ == "__main__":
    main()
