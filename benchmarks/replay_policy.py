"""Replay a parallel-adapt policy over samples already recorded, without the model.

parallel-adapt's samples are parallel's samples: sample k of a prompt is the same
whichever run drew it (the store keeps them one per entry). So the run folders of
``parallel``, ``parallel-adapt`` and ``eager-parallel`` on one dataset together hold,
for each problem, samples 0, 1, ... of its stream. This drives the real scheduler
(policies.make_scheduler) with those samples as its runs' outcomes and prints the
result against parallel at equal tokens, as ``equal_cost.py`` does. It is exact where
every sample the policy asks for is recorded; otherwise it stops and names the first
missing one (then run the eval itself through the store).

    python benchmarks/replay_policy.py benchmarks/results/gsm8k100-qwen --policy sequential --first-samples 3

The first folder argument holds the run folders (``parallel`` among them, the baseline).
With ``--generate DATA``, a missing sample k is made instead: parallel sampling at M = 8,
16, ... (the first multiple of 8 past k) on that problem alone (its index, and so its samples' keys,
kept), with the settings of the ``parallel`` folder's manifest, into
``RUNS/samples/more-p<index>-m<M>`` (read with the run folders from then on); the
samples it shares with the recorded ones must come out equal (else the script stops),
and the replay starts again.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from eager_mlx.evaluation.equal_cost import equal_cost
from eager_mlx.evaluation.evaluate import NATURAL_FINISHES as NATURAL
from eager_mlx.evaluation.metrics import prompt_metrics
from eager_mlx.evaluation.policies import make_scheduler
from eager_mlx.evaluation.rundir import RESULTS, read_records
from eager_mlx.evaluation.scheduler import POLICIES, RunOutcome, SchedulerConfig, prompt_of_run


def _folders(runs: Path) -> list[Path]:
    """The run folders in `runs` and the sample folders --generate made in `runs`/samples."""
    return sorted(p for d in (runs, runs / "samples") if d.is_dir() for p in d.iterdir() if (p / RESULTS).exists())


def _cost(seq: dict) -> int:
    """A sample's generated tokens as its run counts them: its text's tokens and, unless cut, the end token."""
    return seq["tokens"] + (seq["finish_reason"] != "length")


def recorded_samples(folders: list[Path]) -> dict[int, dict[int, dict]]:
    """problem index -> sample number -> sequence record, from every parallel sample in `folders`; a sample
    recorded twice must be the same (else the folders were not made with the same settings)."""
    samples: dict[int, dict[int, dict]] = {}
    for folder in folders:
        for rec in read_records(folder / RESULTS):
            runs = {r["request_id"]: r for r in rec.get("runs", []) if r.get("parallel")}
            for s in rec.get("sequences", []):
                run = runs.get(s["run"])
                if run is None:  # an eager run's sequence (eager-parallel's first run)
                    continue
                k = (run.get("first_sequence") or 0) + s["index"]
                i = prompt_of_run(s["run"])  # the problem's index in the dataset (a record's is in its run's)
                known = samples.setdefault(i, {}).get(k)
                mine = (s["answer"], s["tokens"], s["finish_reason"])
                if known is not None and (known["answer"], known["tokens"], known["finish_reason"]) != mine:
                    sys.exit(f"{folder}: problem {i} sample {k} differs from another folder's")
                samples[i][k] = s
    return samples


def replay(samples: dict[int, dict[int, dict]], config: SchedulerConfig) -> tuple[list[dict], Optional[str]]:
    """Records (index, sequences, metrics) of the policy's run, or ([], the first sample it lacks)."""
    problems = sorted(samples)
    sched = make_scheduler(len(problems), config, problems)
    got: dict[int, list[dict]] = {i: [] for i in range(len(problems))}
    while not sched.done:
        out = sched.schedule()
        if not out.runs:
            return [], "the scheduler started nothing and is not done"
        outcomes = []
        for req in out.runs:
            first = req.first_sequence or 0
            stream = samples[problems[req.prompt_index]]
            seqs = [stream.get(k) for k in range(first, first + req.max_sequences)]
            if any(s is None for s in seqs):
                k = first + next(j for j, s in enumerate(seqs) if s is None)
                return [], f"problem {problems[req.prompt_index]} sample {k}"
            got[req.prompt_index] += seqs
            outcomes.append(RunOutcome(
                req.request_id, req.prompt_index, len(seqs), sum(map(_cost, seqs)),
                answers=tuple(s["answer"] for s in seqs if s["finish_reason"] in NATURAL),
                cut=sum(s["finish_reason"] == "length" for s in seqs)))
        sched.update_from_output(outcomes)
    records = []
    for i, seqs in got.items():
        m = prompt_metrics([s["answer"] for s in seqs], [s["correct"] for s in seqs], sum(map(_cost, seqs)))
        records.append({"index": problems[i], "sequences": seqs,
                        "metrics": {"pass_at_k": m.pass_at_k, "cons_at_k": m.cons_at_k,
                                    "generated_tokens": m.generated_tokens, "num_sequences": m.num_sequences}})
    return records, None


def generate(runs: Path, data: str, index: int, samples: int = 16) -> Path:
    """Parallel at M = `samples` on problem `index` of `data` alone, with the parallel run's settings."""
    import dataclasses

    from eager_mlx import config_for
    from eager_mlx.adaptive.options import AdaptiveOptions
    from eager_mlx.evaluation.data import load_dataset
    from eager_mlx.evaluation.evaluate import EvalSettings, evaluate_model
    from eager_mlx.models import load_model

    manifest = json.loads((runs / "parallel" / "manifest.json").read_text())
    eager = manifest["settings"]["eager"]
    dataset = load_dataset(data, limit=manifest["dataset"]["size"])
    if dataset.hash != manifest["dataset"]["hash"]:
        sys.exit(f"{data}: not the dataset of {runs / 'parallel'}")
    loaded = load_model(manifest["model"])
    config = config_for(loaded.preset, temperature=eager["sampling"]["temperature"], top_p=eager["sampling"]["top_p"],
                        max_tokens=eager["max_tokens"], max_sequences=samples)
    mine = dict(json.loads(json.dumps(dataclasses.asdict(config))), max_sequences=eager["max_sequences"])
    if mine != eager:  # every setting a sample depends on must be the parallel run's
        sys.exit(f"settings differ from {runs / 'parallel'}: {sorted(k for k in eager if mine.get(k) != eager[k])}")
    settings = EvalSettings.build(config, AdaptiveOptions(), method="parallel", max_rows=max(16, samples),
                                  seed=manifest["settings"]["seed"])
    one = dataclasses.replace(dataset, examples=[e for e in dataset.examples if e.index == index])
    out = runs / "samples" / f"more-p{index}-m{samples}"
    evaluate_model(loaded, one, settings, out, resume=(out / "manifest.json").exists())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="folder of run folders, 'parallel' among them")
    ap.add_argument("--policy", choices=[p for p in POLICIES if p != "hit-m"], default="sequential")
    ap.add_argument("--first-samples", type=int, nargs="+", default=[2])
    ap.add_argument("-M", type=int, default=4)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--generate", metavar="DATA", default=None,
                    help="make missing samples with the model (the dataset spec of the runs, e.g. gsm8k)")
    args = ap.parse_args()
    parallel = read_records(args.runs / "parallel" / RESULTS)
    samples = recorded_samples(_folders(args.runs))
    print(f"M={args.M}, policy {args.policy}, runs in {args.runs}")
    print(f"{'first':>5}  {'spent':>5}  {'tokens':>6}  {'Pass@k':>6}  {'par':>5}  {'diff [95% CI]':>23}  "
          f"{'cons@k':>6}  {'par':>5}  {'diff [95% CI]':>23}")
    for f in args.first_samples:
        config = SchedulerConfig(method="parallel-adapt", policy=args.policy, max_sequences=args.M, threshold=0.0,
                                 first_samples=f, budget=args.budget)
        made = set()
        while True:
            records, missing = replay(samples, config)
            if not missing or not args.generate or not missing.startswith("problem ") or missing in made:
                break  # (a sample still missing after it was made: stop rather than loop)
            print(f"generating: {missing}", file=sys.stderr)
            made.add(missing)
            _, index, _, k = missing.split()
            generate(args.runs, args.generate, int(index), 8 * (int(k) // 8 + 1))  # samples 0 .. past k
            samples = recorded_samples(_folders(args.runs))  # read again with what was made
        if missing:
            print(f"{f:>5}  not recorded: {missing}")
            continue
        e = equal_cost(records, parallel)
        spent = sum(r["metrics"]["num_sequences"] for r in records) / (args.M * len(records))
        print(f"{f:>5}  {spent:>5.0%}  {e.tokens_ratio:>6.0%}  {e.pass_at_k:>6.3f}  {e.parallel_pass:>5.3f}  "
              f"{e.pass_diff:+.3f} [{e.pass_ci[0]:+.3f}, {e.pass_ci[1]:+.3f}]  {e.cons_at_k:>6.3f}  "
              f"{e.parallel_cons:>5.3f}  {e.cons_diff:+.3f} [{e.cons_ci[0]:+.3f}, {e.cons_ci[1]:+.3f}]")


if __name__ == "__main__":
    main()
