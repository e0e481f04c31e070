"""eager-mlx performance benchmark: the whole table in one command, written into BENCHMARKS.md.

Run:  python benchmarks/bench.py [--quick] [--long] [--real] [--top-p P] [--out BENCHMARKS.md] [--json FILE]

Runs unchanged on the Linux CPU build, on a Mac (Metal) and on NVIDIA (mlx[cuda]).
Models are the real architectures' configs with random weights (speed does not
depend on the weights' values; nothing is downloaded), in the dtype the real
model gets today (float32 on the CPU, float16 on a GPU); `--real` uses the real
cached models instead. Every comparison is measured side by side in this one
process, repeats interleaved, and reported as the median of paired ratios with
their spread. A section whose memory would not fit is skipped with the reason;
a section that fails prints its error and the others still run.

The end-to-end comparison on real problems is benchmarks/gsm8k_methods.sh + benchmarks/e2e.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import eager_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core on Linux)
import mlx.core as mx

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests"))  # tiny_model and ByteTokenizer (tests/fakes.py)
from fakes import ByteTokenizer, tiny_model  # noqa: E402
from perf_decode import entropy_blocks, free, pair, prefill_one, step_profile  # noqa: E402
from perf_env import available_memory, header_lines, load_average, versions  # noqa: E402
from perf_memory import bandwidth_gbs, fork_cost, guard_peak, kv_memory  # noqa: E402
from perf_models import (  # noqa: E402
    CONFIGS, Bench, approx_weights_bytes, build_random, kv_bytes_per_token, load_real, random_prompt,
    weights_bytes,
)
from perf_stats import paired, verdict  # noqa: E402
from sections import write_section  # noqa: E402

MARKER = "<!-- bench.py -->"
SHORT_PROMPT = 32  # tokens of the random prompt in the short-prompt sections (a chat prompt's size)
LONG_CONTEXT = 16384  # the random model's context: an 8k prompt plus its decode (SmolLM2's own is 8192)
B32_TARGET = 1.3  # section 1's target at B=32 (issue 20: the B=32 lead kept)
LONG_LAYERS = 4  # the long-prompt section's SmolLM2 depth unless --long (8k x 32 rows must fit 24 GB)


@dataclass
class Plan:
    """Sizes of one run."""

    quick: bool
    long: bool
    real: bool
    tokens: int  # timed decode steps per measurement
    repeats: int  # interleaved pairs per decode cell of SmolLM2
    repeats_big: int  # the same for Qwen2.5-0.5B (4x the work per step)
    entropy_pairs: int  # ABBA block pairs (SmolLM2)
    entropy_pairs_big: int
    long_repeats: int  # interleaved pairs per long-prompt cell
    long_prompts: tuple[int, ...] = (2048, 8192)
    long_rows: tuple[int, ...] = (8, 32)
    fork_prompts: tuple[int, ...] = (256, 1024, 4096)
    top_p: float = 1.0  # section 1's sampling on both sides: temperature 0.6, and top-p below 1.0


@dataclass
class Section:
    title: str
    body: str = ""
    verdict: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with two decimals."""
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def mb(x: float) -> float:
    return x / 2**20


def med_tps(runs: list) -> float:
    """The median tokens/s of a side's runs (the upper one of an even count)."""
    return sorted(r.tps for r in runs)[len(runs) // 2]


def too_big(need: int, what: str) -> Optional[str]:
    """A one-line reason to skip `what` when `need` bytes would not fit in the memory free now (else None)."""
    avail = available_memory()
    if avail is not None and need > 0.7 * avail:
        return f"skipped {what}: needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB free now"
    return None


def bench_model(name: str, plan: Plan) -> Bench:
    if plan.real:
        return load_real(name)
    model = build_random(name)
    return Bench(name, model, ByteTokenizer(), random_prompt(SHORT_PROMPT, model.args.vocab_size))


# ---------------------------------------------------------------- 1. decode vs mlx-lm
def decode_section(benches: list[Bench], plan: Plan) -> Section:
    sampling = "temperature 0.6" + (f", top-p {plan.top_p}" if plan.top_p < 1.0 else " only")
    sec = Section(f"1. Decode vs mlx-lm BatchGenerator, branching off, {sampling} "
                  f"(target: ratio >= 1.0 at B=1 and 8, >= {B32_TARGET} at B=32)")
    rows, prof, ok = [], [], True
    for b in benches:
        cache = prefill_one(b.model, b.prompt)
        for batch in (1, 8, 32):
            repeats = plan.repeats_big if is_big(b) else plan.repeats
            a, t = pair(b.model, b.tokenizer, b.prompt, batch, plan.tokens, repeats, cache, top_p=plan.top_p)
            p = paired([r.tps for r in a], [r.tps for r in t])
            target = B32_TARGET if batch == 32 else 1.0
            v = verdict(p, target)
            ok = ok and v == "holds"
            rows.append([b.name, batch, med_tps(a), med_tps(t), p.iqr_text(), p.n, f">= {target}", v])
            sec.raw[f"{b.name} B={batch}"] = {"ours": [asdict(r) for r in a], "mlx_lm": [asdict(r) for r in t]}
            print(f"  {b.name} B={batch}: ours {rows[-1][2]:.1f} tok/s, mlx-lm {rows[-1][3]:.1f}, ratio {p.iqr_text()}",
                  flush=True)
        del cache
        free()
        try:
            prof.append([b.name, *step_profile(b.model, b.tokenizer, b.prompt)])
        except Exception as e:  # noqa: BLE001  (it patches engine internals, which may have changed)
            prof.append([b.name, f"n/a ({type(e).__name__}: {e})", ""])
    sec.body = (md_table(["model", "B", "eager-mlx tok/s", "mlx-lm tok/s", "ratio median [IQR]", "pairs", "target",
                          "holds"], rows)
                + "\n\nWhere a B=1 step's time goes (building the pass's graph is Python work per step):\n\n"
                + md_table(["model", "build graph ms", "whole step ms"], prof))
    sec.verdict = "holds" if ok else "does not hold"
    return sec


# ---------------------------------------------------------------- 2. long shared prompts
def long_need(model: Any, plen: int, rows: int, tokens: int) -> int:
    """Bytes the mlx-lm side may hold at once: its batch cache twice (merge / growth copies) + one row."""
    return (2 * rows + 1) * (plen + 256 + tokens) * kv_bytes_per_token(model)


def long_row(model: Any, tok: Any, plen: int, rows: int, plan: Plan, name: str) -> tuple[list[Any], dict]:
    prompt = random_prompt(plen, model.args.vocab_size, seed=plen)
    cache = prefill_one(model, prompt)
    a, t = pair(model, tok, prompt, rows, plan.tokens, plan.long_repeats, cache)
    del cache
    free()
    p = paired([r.tps for r in a], [r.tps for r in t])
    kv_a, kv_t = a[-1].kv, t[-1].kv
    peak_a, peak_t = max(r.peak for r in a), max(r.peak for r in t)
    row = [name, plen, rows, p.iqr_text(), med_tps(a), med_tps(t), mb(kv_a), mb(kv_t), f"1/{kv_t / kv_a:.1f}",
           mb(peak_a), mb(peak_t)]
    print(f"  P={plen} B={rows}: ratio {p.iqr_text()}, KV {mb(kv_a):.0f} vs {mb(kv_t):.0f} MB", flush=True)
    return row, {"ours": [asdict(r) for r in a], "mlx_lm": [asdict(r) for r in t], "ratio": p.median,
                 "q1": p.q1, "kv_ratio": kv_t / kv_a}


def long_section(plan: Plan) -> Section:
    layers = None if plan.long else LONG_LAYERS
    name = "smollm2-135m" + ("" if layers is None else f" ({layers} of 30 layers)")
    sec = Section(f"2. Long shared prompt, {name}: one prompt, B rows (target at 8k, B=32: >= 2x tokens/s and "
                  "<= 1/4 of mlx-lm's KV memory)")
    model = build_random("smollm2-135m", layers, context=LONG_CONTEXT)
    tok = ByteTokenizer()
    rows, skipped, at_target = [], [], None
    for plen in plan.long_prompts:
        for batch in plan.long_rows:
            reason = too_big(long_need(model, plen, batch, plan.tokens), f"P={plen} B={batch}")
            if reason:
                skipped.append(reason)
                print("  " + reason, flush=True)
                continue
            row, raw = long_row(model, tok, plen, batch, plan, name)
            rows.append(row)
            sec.raw[f"P={plen} B={batch}"] = raw
            if plen == 8192 and batch == 32:
                at_target = raw["q1"] >= 2.0 and raw["kv_ratio"] >= 4.0  # the whole IQR, as verdict()
    del model
    free()
    sec.body = md_table(["model", "prompt", "B", "tok/s ratio median [IQR]", "eager-mlx tok/s", "mlx-lm tok/s",
                         "eager-mlx KV MB", "mlx-lm KV MB", "KV eager/mlx-lm", "eager-mlx peak MB",
                         "mlx-lm peak MB"], rows)
    sec.body += ("\n\ntok/s are medians of the pairs; peaks are `mx.get_peak_memory()` over the timed decode "
                 "above the memory in use before that side started (its KV and temporaries, not the weights). "
                 "mlx-lm's batch cache is built from B copies of one prefilled prompt (the same cache as "
                 "prefilling it B times; prefill is not measured). The random "
                 f"model's context is raised to {LONG_CONTEXT} so that 8192 prompt tokens plus the decode fit "
                 "(rope works at any position; the real SmolLM2's context is 8192).")
    if skipped:
        sec.body += "\n\n" + "\n".join(f"- {s}" for s in skipped)
    sec.verdict = {None: "not measured (8k, B=32 skipped)", True: "holds", False: "does not hold"}[at_target]
    return sec


# ---------------------------------------------------------------- 3. token statistics overhead
def entropy_section(benches: list[Bench], plan: Plan) -> Section:
    sec = Section("3. Token statistics (entropy + top-2 + log-probs) vs plain sampling, B=8 (target: <= 3% slower)")
    rows, verdicts = [], []
    for b in benches:
        pairs = plan.entropy_pairs_big if is_big(b) else plan.entropy_pairs
        full, plain = entropy_blocks(b.model, b.tokenizer, b.prompt, 8, pairs)
        p = paired(plain, full)  # > 1: the statistics cost time
        v = "holds" if p.ci_hi <= 1.03 else ("no" if p.ci_lo > 1.03 else "not shown")
        verdicts.append(v)
        rows.append([b.name, p.n, sorted(full)[len(full) // 2], sorted(plain)[len(plain) // 2], p.ci_text(True), v])
        sec.raw[b.name] = {"with_stats": full, "plain": plain}
        print(f"  {b.name}: slowdown {p.ci_text(True)}", flush=True)
    sec.body = md_table(["model", "block pairs", "with stats tok/s", "plain tok/s", "slowdown median (CI)",
                         "holds"], rows)
    sec.body += ("\n\nOne engine run per model; the statistics function is swapped every 8 steps in ABBA order "
                 "(the step after a swap is not timed). 'holds' needs the CI's upper end <= 3%, "
                 "'no' its lower end > 3%; "
                 "'not shown' otherwise.")
    sec.verdict = ("does not hold" if "no" in verdicts else "holds" if set(verdicts) == {"holds"}
                   else "not shown (a confidence interval includes 3%)")
    return sec


# ---------------------------------------------------------------- 4. fork cost, 5. KV memory
def fork_section(smol: Bench, plan: Plan) -> Section:
    sec = Section("4. Fork cost flat in the prompt length, 64-token suffix (target: largest vs smallest prompt "
                  "<= 1.2x)")
    fk = []
    for plen in plan.fork_prompts:
        fk.append(fork_cost(smol.model, smol.tokenizer, plen, 64, forks=15, copies=5))
        print(f"  fork P={plen}: ours {fk[-1][1]:.2f} ms, mlx-lm copy {fk[-1][2]:.2f} ms", flush=True)
    flat = fk[-1][1] / fk[0][1]
    sec.raw = {"fork": fk}
    sec.body = (md_table(["prompt tokens", "eager-mlx fork ms", "mlx-lm cache copy ms", "eager-mlx MB copied",
                          "mlx-lm MB copied"], fk)
                + f"\n\nFork time at {fk[-1][0]} vs {fk[0][0]} prompt tokens: {flat:.2f}x ({smol.name}; medians "
                "of 15 forks, 5 mlx-lm copies).")
    sec.verdict = "holds" if flat <= 1.2 else "does not hold"
    return sec


def kv_section(smol: Bench, plan: Plan) -> Section:
    sec = Section("5. KV memory of 32 rows of one prompt (target: <= 1.2x of the prompt once + all suffixes)")
    tiny, tok = tiny_model("llama", layers=4), ByteTokenizer()
    mem = []
    for plen, suffix in [(512, 200)] if plan.quick else [(512, 200), (2048, 200), (2048, 1000)]:
        ours, ideal, theirs = kv_memory(tiny, tok, plen, 32, suffix)
        mem.append([plen, 32, suffix, mb(ours), mb(ideal), mb(theirs), ours / ideal, theirs / ideal])
        print(f"  kv P={plen} S={suffix}: ours {mb(ours):.1f} MB, ideal {mb(ideal):.1f}, mlx-lm {mb(theirs):.1f}",
              flush=True)
    sec.raw = {"kv": mem}
    sec.body = ("4-layer tiny model (byte ratios do not depend on the model's size); mlx-lm's bytes are its "
                "BatchGenerator's cache after the same decode.\n\n"
                + md_table(["prompt", "rows", "suffix", "eager-mlx MB", "ideal MB", "mlx-lm MB", "eager-mlx/ideal",
                            "mlx-lm/ideal"], mem))
    sec.verdict = "holds" if all(r[6] <= 1.2 for r in mem) else "does not hold"
    return sec


# ---------------------------------------------------------------- 6. the bandwidth bound
def bandwidth_section(smol: Bench, plan: Plan) -> Section:
    sec = Section("6. Single-row decode vs the memory-bandwidth bound (target: >= 70%)")
    bw = bandwidth_gbs()
    a, _ = pair(smol.model, smol.tokenizer, smol.prompt, 1, plan.tokens, 1)
    single = a[0].tps
    wbytes = weights_bytes(smol.model)
    bound = bw * 1e9 / wbytes
    sec.raw = {"bandwidth_gbs": bw, "weights_bytes": wbytes, "tps": single}
    sec.body = md_table(["model", "weights MB", "bandwidth GB/s (mx sum of 256 MB)", "bound tok/s", "measured tok/s",
                         "fraction"], [[smol.name, mb(wbytes), bw, bound, single, single / bound]])
    sec.verdict = "holds" if single / bound >= 0.7 else "does not hold"
    return sec


# ---------------------------------------------------------------- 7. the memory guard
def guard_section(smol: Bench, plan: Plan) -> Section:
    sec = Section(f"7. Memory guard (--max-kv-memory 64MB), {smol.name}, theta 0.5, M=32, 96 tokens "
                  "(target: the capped peak stays below the uncapped one)")
    peak_free, seqs_free, _ = guard_peak(smol.model, smol.tokenizer, smol.prompt, None)
    peak_cap, seqs_cap, skipped = guard_peak(smol.model, smol.tokenizer, smol.prompt, 64 * 2**20)
    sec.raw = {"free": [peak_free, seqs_free], "capped": [peak_cap, seqs_cap, skipped]}
    sec.body = md_table(["setting", "peak memory MB (above the start)", "sequences", "forks skipped"],
                        [["no guard", mb(peak_free), seqs_free, 0], ["64MB guard", mb(peak_cap), seqs_cap, skipped]])
    sec.verdict = "holds" if peak_cap < peak_free else "does not hold"
    return sec


# ---------------------------------------------------------------- main
def run_section(make: Callable[[], Section], title: str) -> Section:
    """Run one section; a failure becomes its one-line error in the table, and the others still run."""
    print(title, flush=True)
    start = time.perf_counter()
    try:
        sec = make()
        sec.raw["seconds"] = round(time.perf_counter() - start, 1)
        print(f"  ({title}: {sec.raw['seconds']} s)", flush=True)
        return sec
    except Exception as e:  # noqa: BLE001  (report it, keep what the other sections measured)
        traceback.print_exc()
        return Section(title, f"Failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                       "not measured")
    finally:
        free()


def plan_from(args: argparse.Namespace) -> Plan:
    """Sizes: the full run takes about 20 minutes on an idle 2-core CPU; --quick a few."""
    if not 0.0 < args.top_p <= 1.0:
        raise SystemExit(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.top_p < 1.0 and not args.real:
        raise SystemExit(f"--top-p {args.top_p} needs --real: random weights give flat logits, whose nucleus reaches "
                         "past the 256 candidates on every row (drawn again over the whole vocabulary), which a real "
                         "model's seldom does")
    if args.quick:
        return Plan(True, args.long, args.real, tokens=8, repeats=1, repeats_big=1, entropy_pairs=4,
                    entropy_pairs_big=4, long_repeats=1, fork_prompts=(256, 1024), top_p=args.top_p)
    return Plan(False, args.long, args.real, tokens=24, repeats=5, repeats_big=3, entropy_pairs=16,
                entropy_pairs_big=8, long_repeats=3, top_p=args.top_p)


def is_big(b: Bench) -> bool:
    return b.name.startswith("qwen")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one repeat, fewer tokens and sizes: a smoke run of a few minutes")
    ap.add_argument("--long", action="store_true",
                    help=f"long-prompt section at SmolLM2's full 30 layers (default {LONG_LAYERS}: 8k x 32 rows of "
                         "the full model is ~12 GB of fp32 KV for mlx-lm)")
    ap.add_argument("--real", action="store_true", help="the real cached models (eager-mlx models pull NAME) "
                                                        "instead of random weights, where a section allows")
    ap.add_argument("--top-p", type=float, default=1.0,
                    help="section 1: also filter by top-p on both sides (as the presets do; mlx-lm sorts the "
                         "vocabulary for it, eager-mlx takes the nucleus from its top candidates); needs --real; "
                         "default 1.0, off")
    ap.add_argument("--only", default="", help="comma-separated section numbers to run (e.g. 1,3); default all")
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="markdown file to write the section into")
    ap.add_argument("--json", type=Path, default=None, help="also write every raw measurement here")
    return ap.parse_args(argv)


def benches_for(plan: Plan) -> tuple[list[Bench], list[str]]:
    """The decode models that fit in memory now, and a reason for each one skipped."""
    out, skipped = [], []
    for name in CONFIGS:
        reason = too_big(int(1.3 * approx_weights_bytes(name)), f"{name}")
        if reason:
            skipped.append(reason)
            continue
        out.append(bench_model(name, plan))
    return out, skipped


@dataclass
class Output:
    """Where and how the table goes; saved after every section, so an interrupted run keeps what it measured."""

    args: argparse.Namespace
    plan: Plan
    command: str
    load_at_start: str
    skipped: list[str]
    sections: list[Section] = field(default_factory=list)

    def add(self, section: Section) -> None:
        self.sections.append(section)
        self.save(final=False)

    def text(self, final: bool) -> str:
        plan = self.plan
        weights = ("the real cached models" if plan.real else "random weights in the real architectures' configs")
        lines = ["## Performance benchmark", ""] + header_lines(self.command, self.load_at_start)
        top_p = f" (section 1: top-p {plan.top_p} on both sides)" if plan.top_p < 1.0 else ""
        lines += ["", f"Models: {weights}, {'float16' if _gpu() else 'float32'}; {plan.tokens} timed decode steps "
                  f"per measurement after 3 untimed ones, temperature 0.6{top_p}, EOS off. Each cell is "
                  f"interleaved pairs of runs ({plan.repeats} for SmolLM2, {plan.repeats_big} for Qwen, "
                  f"{plan.long_repeats} for long prompts); ratios are medians of the paired ratios with their "
                  "interquartile range.", ""]
        if not final:
            lines += ["**Partial: the run has not finished.**", ""]
        lines += [f"- {s}" for s in self.skipped] + ([""] if self.skipped else [])
        for s in sorted(self.sections, key=lambda s: s.title):
            lines += [f"### {s.title}", "", s.body, "", f"**Target: {s.verdict}.**", ""]
        return "\n".join(lines)

    def save(self, final: bool) -> str:
        text = self.text(final)
        write_section(self.args.out, MARKER, text)
        if self.args.json:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            raw = {"command": self.command, "final": final, "report": text,
                   "sections": [asdict(s) for s in self.sections]}
            self.args.json.write_text(json.dumps(raw, indent=1))
        return text


def _gpu() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    plan = plan_from(args)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    want = lambda n: not only or str(n) in only  # noqa: E731
    load_at_start = load_average()
    versions()  # the commit is read now, before the run
    command = "python benchmarks/bench.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    print(f"bench: device {mx.default_device()}, load {load_at_start}", flush=True)
    benches, skipped = benches_for(plan)
    out = Output(args, plan, command, load_at_start, skipped)
    smol = next((b for b in benches if b.name.startswith("smollm2")), None)
    if want(1):
        out.add(run_section(lambda: decode_section(benches, plan), "1. decode vs mlx-lm"))
    if want(3):
        out.add(run_section(lambda: entropy_section(benches, plan), "3. token statistics overhead"))
    for b in benches:
        if b is not smol:
            b.model = None  # only SmolLM2 is needed below; give the rest back before the long prompts
    free()
    if want(2):
        out.add(run_section(lambda: long_section(plan), "2. long shared prompts"))
    for n, make, title in [(4, fork_section, "4. fork cost"), (5, kv_section, "5. KV memory"),
                           (6, bandwidth_section, "6. bandwidth bound"), (7, guard_section, "7. memory guard")]:
        if want(n) and smol is not None:
            out.add(run_section(lambda make=make: make(smol, plan), title))
    print(out.save(final=True))


if __name__ == "__main__":
    main()
