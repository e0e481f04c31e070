"""eager-mlx performance benchmark: prints one table per figure and writes BENCHMARKS.md.

Run:  python benchmarks/bench.py [--quick] [--out BENCHMARKS.md]

The end-to-end comparison on real problems is benchmarks/gsm8k_methods.sh + benchmarks/e2e.py.

Every comparison is measured side by side in this one process, repeats
interleaved, and reported as a median ratio (the machine may be shared and noisy).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import eager_mlx  # noqa: F401  (loads OpenBLAS before mlx on Linux)
import mlx.core as mx
import numpy as np
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import KVCache
from mlx_lm.sample_utils import make_sampler

import eager_mlx.engine.engine as engine_mod
from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.engine.sampling import STAT_FIELDS, gumbel_noise

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes import ByteTokenizer, tiny_model  # noqa: E402
from sections import write_section  # noqa: E402  (benchmarks/ is the script's folder)

SAMPLING = SamplingConfig(temperature=0.6)


def median_of(fn, repeats):
    return statistics.median(fn() for _ in range(repeats))


# ---------------------------------------------------------------- decode throughput
def ours_tps(model, tok, prompt, rows, tokens):
    engine = Engine(model, tok, max_rows=max(rows, 1), seed=0, token_events=False)
    engine.eos = set()  # same token count on both sides
    engine.add("x", prompt, EagerConfig(parallel=True, max_sequences=rows, max_tokens=tokens, sampling=SAMPLING))
    engine.step()
    engine.step()  # prefill and the first pass are outside the timed window
    start, steps = time.perf_counter(), 0
    while engine.has_work:
        engine.step()
        steps += 1
    return rows * steps / (time.perf_counter() - start)


def mlx_lm_tps(model, prompt, rows, tokens):
    gen = BatchGenerator(model, max_tokens=tokens, stop_tokens=None, sampler=make_sampler(temp=0.6),
                         completion_batch_size=rows, prefill_batch_size=min(rows, 8))
    gen.insert([prompt] * rows, [tokens] * rows)
    count, start = 0, None
    while responses := gen.next_generated():
        if start is None:  # the first token comes out of prefill: start the clock there
            start = time.perf_counter()
            continue
        count += len(responses)
    gen.close()
    return count / (time.perf_counter() - start)


def decode_table(models, batches, tokens, repeats):
    rows = []
    for name, (model, tok, prompt) in models.items():
        for b in batches:
            ours, theirs = [], []
            for _ in range(repeats):  # interleaved
                ours.append(ours_tps(model, tok, prompt, b, tokens))
                theirs.append(mlx_lm_tps(model, prompt, b, tokens))
            ratio = statistics.median(o / t for o, t in zip(ours, theirs))
            rows.append([name, b, statistics.median(ours), statistics.median(theirs), ratio])
            print(f"  decode {name} B={b}: ours {rows[-1][2]:.1f} tok/s, mlx-lm {rows[-1][3]:.1f}, ratio {ratio:.2f}",
                  flush=True)
    return rows


def step_profile(model, tok, prompt, rows, steps=40):
    """Per step: ms spent building the pass's graph in Python vs the whole step (no branching)."""
    engine = Engine(model, tok, max_rows=rows, seed=0, token_events=False)
    engine.eos = set()
    engine.add("x", prompt, EagerConfig(parallel=True, max_sequences=rows, max_tokens=steps + 8, sampling=SAMPLING))
    engine.step()
    engine.step()
    build, total = [], []
    forward = engine._forward

    def timed(*args):
        t = time.perf_counter()
        out = forward(*args)
        build.append(time.perf_counter() - t)
        return out

    engine._forward = timed
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        total.append(time.perf_counter() - t)
    return statistics.median(build) * 1e3, statistics.median(total) * 1e3


# ---------------------------------------------------------------- entropy overhead
def _plain_stats(logits, sampling, seeds, entropy_top_k=20):
    """Sampling only: what the engine would do without entropy / top-2 (same noise, same output shape)."""
    tempered = logits.astype(mx.float32) / sampling.temperature
    token = mx.argmax(tempered + gumbel_noise(seeds, mx.arange(tempered.shape[-1])[None]), axis=-1)
    out = mx.zeros((logits.shape[0], len(STAT_FIELDS)), mx.float32)
    return mx.concatenate([token[:, None].astype(mx.float32), out[:, 1:]], axis=1)


def entropy_overhead(model, tok, prompt, rows, tokens, repeats):
    real = engine_mod.token_stats
    full, plain = [], []
    for _ in range(repeats):
        full.append(ours_tps(model, tok, prompt, rows, tokens))
        engine_mod.token_stats = _plain_stats
        try:
            plain.append(ours_tps(model, tok, prompt, rows, tokens))
        finally:
            engine_mod.token_stats = real
    slowdown = statistics.median(p / f for p, f in zip(plain, full)) - 1
    return statistics.median(full), statistics.median(plain), slowdown


# ---------------------------------------------------------------- fork cost and KV memory
def fork_cost(model, tok, prompt_lengths, suffix, repeats):
    """Time to fork a row with `suffix` generated tokens, ours vs an mlx-lm cache copy."""
    out = []
    rng = np.random.default_rng(0)
    for plen in prompt_lengths:
        prompt = rng.integers(100, 1000, size=plen).tolist()
        engine = Engine(model, tok, max_rows=4, seed=0, token_events=False)
        engine.eos = set()
        engine.add("x", prompt, EagerConfig(threshold=100, max_sequences=2, max_tokens=suffix + 8, sampling=SAMPLING))
        for _ in range(suffix):
            engine.step()
        row = engine._rows[0]
        kv = engine._kv

        def ours():
            mx.eval(kv.arrays())
            t = time.perf_counter()
            kv.copy_row(0, 1, row.start, engine._column)
            mx.eval(kv.arrays())
            return time.perf_counter() - t

        # mlx-lm: the sequence's cache (prompt + suffix); a fork is a deep copy, paid at the first write.
        caches = [KVCache() for _ in model.layers]
        model(mx.array(prompt + [1] * suffix)[None], cache=caches)
        mx.eval([c.state for c in caches])
        one = mx.zeros((1, caches[0].keys.shape[1], 1, caches[0].keys.shape[3]), caches[0].keys.dtype)

        def theirs():
            t = time.perf_counter()
            forked = copy.deepcopy(caches)
            for c in forked:
                c.update_and_fetch(one, one)
            mx.eval([c.state for c in forked])
            return time.perf_counter() - t

        a = median_of(ours, repeats)
        b = median_of(theirs, repeats)
        per_token = sum(k.nbytes + v.nbytes for k, v in kv.prompts["x"]) / plen
        out.append([plen, a * 1e3, b * 1e3, suffix * per_token / 2**20, (plen + suffix) * per_token / 2**20])
        print(f"  fork P={plen}: ours {a*1e3:.2f} ms, mlx-lm copy {b*1e3:.2f} ms", flush=True)
        del engine, caches
    return out


def kv_memory(model, tok, plen, rows, suffix):
    """KV bytes for `rows` samples of one prompt: ours vs the ideal (prompt once + suffixes) vs mlx-lm."""
    rng = np.random.default_rng(1)
    prompt = rng.integers(1, 250, size=plen).tolist()
    engine = Engine(model, tok, max_rows=rows, seed=0, token_events=False)
    engine.eos = set()
    engine.add("x", prompt, EagerConfig(parallel=True, max_sequences=rows, max_tokens=suffix + 4, sampling=SAMPLING))
    for _ in range(suffix + 1):
        engine.step()
    mx.eval(engine._kv.arrays())
    ours = engine.kv_bytes()
    per_token = sum(k.nbytes + v.nbytes for k, v in engine._kv.prompts["x"]) // plen
    ideal = (plen + rows * suffix) * per_token
    # mlx-lm's BatchKVCache keeps every row's own copy of the prompt, in 256-token steps.
    theirs = rows * (-(-(plen + suffix) // 256) * 256) * per_token
    return ours, ideal, theirs


# ---------------------------------------------------------------- memory guard
def guard_peak(model, tok, prompt, limit):
    engine = Engine(model, tok, max_rows=32, seed=0, token_events=False, max_kv_memory=limit)
    engine.add("x", prompt, EagerConfig(threshold=0.5, max_sequences=32, max_tokens=96, sampling=SAMPLING))
    mx.eval(mx.zeros(1))
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    result = None
    while engine.has_work:
        for ev in engine.step():
            if hasattr(ev, "result"):
                result = ev.result
    return (mx.get_peak_memory() - base), result.num_sequences, result.info["branches_skipped_memory"]


# ---------------------------------------------------------------- the bandwidth limit
def bandwidth_gbs():
    x = mx.random.uniform(shape=(64 * 2**20,))  # 256 MB
    mx.eval(x)

    def once():
        t = time.perf_counter()
        mx.eval(x.sum())
        return time.perf_counter() - t

    return x.nbytes / median_of(once, 5) / 1e9


def weights_bytes(model):
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


# ---------------------------------------------------------------- main
def md_table(header, rows):
    """A markdown table; floats with two decimals."""
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run)")
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    tokens = 16 if args.quick else 48

    loaded = eager_mlx.load("smollm2-135m")
    smol_prompt = eager_mlx.encode_prompt(loaded.tokenizer, "Tell me a story about a dragon who learns to count.")
    byte_tok = ByteTokenizer()
    tiny = tiny_model("llama", layers=4)
    models = {
        "tiny-random": (tiny, byte_tok, byte_tok.encode("Tell me a story about a dragon.")),
        "smollm2-135m": (loaded.model, loaded.tokenizer, smol_prompt),
    }
    sections = []
    print("1. decode throughput", flush=True)
    dec = decode_table(models, [1, 8, 32], tokens, repeats)
    ok1 = all(r[4] >= 1.0 for r in dec) and all(r[4] >= 1.2 for r in dec if r[1] == 32)
    prof = []
    for name, (model, tok, prompt) in models.items():
        build, total = step_profile(model, tok, prompt, 1)
        prof.append([name, 1, build, total])
    sections.append(("1. Decode throughput, branching off (target: ratio >= 1.0 at every B, >= 1.2 at B=32)",
                     md_table(["model", "B", "eager-mlx tok/s", "mlx-lm BatchGenerator tok/s", "ratio"], dec)
                     + "\n\nWhere a step's time goes at B=1 (graph building is Python work per step):\n\n"
                     + md_table(["model", "B", "build graph ms", "whole step ms"], prof), ok1))

    print("2. fork cost and KV memory", flush=True)
    plens = [256, 1024] if args.quick else [256, 1024, 4096]
    fk = fork_cost(loaded.model, loaded.tokenizer, plens, 64, repeats + 2)
    flat = fk[-1][1] / fk[0][1]
    mem_rows = []
    # Byte ratios do not depend on the model's size: the 4-layer tiny model keeps this fast.
    for plen, suffix in ([(512, 200)] if args.quick else [(512, 200), (2048, 200), (2048, 1000)]):
        ours, ideal, theirs = kv_memory(tiny, byte_tok, plen, 32, suffix)
        mem_rows.append([plen, 32, suffix, ours / 2**20, ideal / 2**20, theirs / 2**20, ours / ideal, theirs / ideal])
        print(f"  kv P={plen} S={suffix}: ours {ours/2**20:.1f} MB, ideal {ideal/2**20:.1f}, mlx-lm {theirs/2**20:.1f}",
              flush=True)
    ok2 = flat <= 1.2 and all(r[6] <= 1.2 for r in mem_rows)
    sections.append((f"2. Fork cost, 64-token suffix (target: {plens[-1]} vs {plens[0]} <= 1.2x; measured {flat:.2f}x)",
                     md_table(["prompt tokens", "eager-mlx fork ms", "mlx-lm cache copy ms", "eager-mlx MB copied",
                               "mlx-lm MB copied"], fk) + "\n\n"
                     + "KV memory of 32 rows of one prompt, tiny model (target: <= 1.2x of prompt once + all suffixes)\n\n"
                     + md_table(["prompt", "rows", "suffix", "eager-mlx MB", "ideal MB", "mlx-lm MB", "eager-mlx/ideal",
                                 "mlx-lm/ideal"], mem_rows), ok2))

    print("3. entropy overhead", flush=True)
    full, plain, slow = entropy_overhead(loaded.model, loaded.tokenizer, smol_prompt, 8, tokens, repeats + 2)
    sections.append(("3. Entropy and top-2 read back vs plain sampling, SmolLM2 B=8 (target: <= 3% slower)",
                     md_table(["with entropy tok/s", "plain sampling tok/s", "slowdown"],
                              [[full, plain, f"{slow*100:.1f}%"]]), slow <= 0.03))

    print("5. the limit", flush=True)
    bw = bandwidth_gbs()
    single = statistics.median(ours_tps(loaded.model, loaded.tokenizer, smol_prompt, 1, tokens) for _ in range(repeats))
    wbytes = weights_bytes(loaded.model)
    bound = bw * 1e9 / wbytes
    frac = single / bound
    sections.append(("5. Single-row decode vs the memory-bandwidth bound, SmolLM2 fp32 (target: >= 70%)",
                     md_table(["weights MB", "bandwidth GB/s (mx sum of 256 MB)", "bound tok/s", "measured tok/s",
                               "fraction"], [[wbytes / 2**20, bw, bound, single, frac]]), frac >= 0.7))

    print("6. memory guard", flush=True)
    peak_free, seqs_free, _ = guard_peak(loaded.model, loaded.tokenizer, smol_prompt, None)
    limit = 64 * 2**20
    peak_guard, seqs_guard, skipped = guard_peak(loaded.model, loaded.tokenizer, smol_prompt, limit)
    sections.append(("6. Memory guard (--max-kv-memory 64MB), SmolLM2, theta 0.5, M=32, 96 tokens",
                     md_table(["setting", "peak memory MB (above weights)", "sequences", "forks skipped"],
                              [["no guard", peak_free / 2**20, seqs_free, 0],
                               ["64MB guard", peak_guard / 2**20, seqs_guard, skipped]]),
                     peak_guard < peak_free))

    machine = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, mlx {mx.__version__}, "
               f"device {mx.default_device()}, load average at the end {os.getloadavg()[0]:.1f} (other work shares the machine)")
    cmd = "python benchmarks/bench.py" + (" --quick" if args.quick else "")
    out = [f"## Performance benchmark ({datetime.date.today()})", "",
           f"Command: `{cmd}`  ", f"Machine: {machine}", ""]
    for title, body, ok in sections:
        out += [f"### {title}", "", body, "", f"**Target {'holds' if ok else 'does not hold'}.**", ""]
    report = "\n".join(out)
    print(report)
    write_section(args.out, "<!-- bench.py -->", report)


if __name__ == "__main__":
    main()
