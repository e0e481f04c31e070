"""Print the README's model support table: every architecture of tests/tiny_archs.py, checked as
tests/test_architectures.py checks it.

Run:  .venv/bin/python tests/support_table.py   (then paste it between the README's markers)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eager_mlx.engine.prefix as prefix_module  # noqa: E402
from eager_mlx import Engine  # noqa: E402
from eager_mlx.engine.recurrent import RecurrentLeaf  # noqa: E402
from test_architectures import ARCHS, PROMPTS, TOK, _reference, _run  # noqa: E402
from tiny_archs import build, skip_reason, status  # noqa: E402

HEADER = "| architecture | status | layers (tiny model) | how checked |\n|---|---|---|---|"


def layer_kinds(engine: Engine) -> str:
    kinds = []
    found = engine.layer_kinds
    for i, leaf in enumerate(engine._kv.leaves):
        if isinstance(leaf, RecurrentLeaf):
            kinds.append("recurrent state")
            continue
        kinds.append("MLA" if leaf.mla else f"sliding window {leaf.window}" if leaf.window else "global attention")
        kinds += ["attention sinks"] * (i in found.sinks) + ["KV shared with later layers"] * (i in found.shared)
    return ", ".join(dict.fromkeys(kinds))


def row(name: str, import_error: str) -> str:
    state = status(name, import_error)
    if state == "not checked here":
        return f"| {name} | {state} | | {skip_reason(name, import_error)} |"
    model = build(name)
    try:
        engine = Engine(model, TOK, max_rows=8, seed=1)
    except ValueError as e:
        return f"| {name} | refused | | refused at load: {str(e).removeprefix('unsupported model: ')} |"
    results = _run(engine)
    err = 0.0
    for rid, result in results.items():
        tokens = [s.token_ids for s in result.sequences]
        for seq, ref in zip(result.sequences, _reference(model, PROMPTS[rid], tokens)):
            err = max([err] + [abs(a - b) for a, b in zip(seq.logprobs, ref)])
    verdict = "supported" if err < 1e-4 else f"WRONG ({err:.1e})"
    bound = "< 1e-5" if err < 1e-5 else f"{err:.0e}"  # a bound keeps the table the same from run to run
    return f"| {name} | {verdict} | {layer_kinds(engine)} | forked rows = plain forward, max log-prob error {bound} |"


def main() -> None:
    prefix_module._PREFILL_CHUNK = 4
    print(HEADER)
    for name, import_error in ARCHS:
        print(row(name, import_error), flush=True)


if __name__ == "__main__":
    main()
