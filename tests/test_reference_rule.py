"""The engine's trees against a pure-Python rendering of the branch rule (greedy, random Markov models)."""
import numpy as np
import pytest

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.engine.sampling import entropy
from eager_mlx.results import RunFinished

from fakes import ByteTokenizer, MarkovModel

TOK = ByteTokenizer()
PROMPT = TOK.encode("Go: q")


def reference_tree(model, cfg):
    """[(tokens, parent, branch_step)] by sequence index, decision by decision as the method says."""
    table = np.array(model.table)
    ent = np.array(entropy(model.table, cfg.entropy_top_k))  # bitwise the engine's values
    order = np.argsort(-table, axis=1, kind="stable")
    rows = [{"tokens": [], "last": PROMPT[-1], "parent": None, "step": None, "done": False}]
    history, num, since, closed = [], 1, 0, False

    def emit(row, token):
        if token == TOK.EOS:
            row["done"] = True
            return
        row["tokens"].append(int(token))
        row["last"] = token
        row["done"] = len(row["tokens"]) >= cfg.max_tokens

    for step in range(cfg.max_tokens):
        live = [r for r in rows if not r["done"]]
        if not live:
            break
        hs = [float(ent[r["last"]]) for r in live]
        chosen = []
        if not closed and since >= cfg.no_branch_window:
            closed = True
        if not closed:
            theta = cfg.threshold
            if cfg.dynamic_threshold and history:
                theta = max(theta, float(np.percentile(history, cfg.dynamic_percentile)))
            for i, h in enumerate(hs):
                if h > theta and num < cfg.max_sequences:
                    chosen.append(i)
                    num += 1
        if cfg.dynamic_threshold:
            history += hs
        since = 0 if chosen else since + 1
        for i, r in enumerate(live):
            top1, top2 = order[r["last"], 0], order[r["last"], 1]
            if i in chosen:
                child = {"tokens": list(r["tokens"]), "last": None, "parent": rows.index(r), "step": step,
                         "done": False}
                rows.append(child)
                emit(child, top2)
            emit(r, top1)
    return [(r["tokens"], r["parent"], r["step"]) for r in rows]


def engine_tree(model, cfg):
    engine = Engine(model, TOK, max_rows=64, seed=0)
    engine.add("r", PROMPT, cfg)
    result = None
    while engine.has_work:
        result = next((ev.result for ev in engine.step() if isinstance(ev, RunFinished)), result)
    return [(s.token_ids, s.parent, s.branch_step) for s in result.sequences]


@pytest.mark.parametrize("dynamic", [False, True])
def test_engine_matches_the_reference_rule(dynamic):
    branched = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        model = MarkovModel.random(seed, eos=-1.0)
        cfg = EagerConfig(threshold=float(rng.uniform(1.0, 2.4)), max_sequences=int(rng.integers(2, 9)),
                          max_tokens=int(rng.integers(6, 20)), no_branch_window=int(rng.integers(2, 8)),
                          dynamic_threshold=dynamic, think_end=None, sampling=SamplingConfig(temperature=0))
        want = reference_tree(model, cfg)
        assert engine_tree(model, cfg) == want, (seed, cfg)
        branched += len(want) > 1
    assert branched >= 6  # the cases exercise the rule, not only single rows
