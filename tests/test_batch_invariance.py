"""A prompt's tree depends only on its seed and settings, not on what else shares the batch."""
import numpy as np
import pytest

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.results import RunFinished

from fakes import ByteTokenizer, MarkovModel, tiny_model

TOK = ByteTokenizer()
T06 = SamplingConfig(temperature=0.6)
TARGETS = {
    "fixed": EagerConfig(threshold=1.8, max_sequences=6, max_tokens=14, sampling=T06),
    "dynamic": EagerConfig(threshold=1.2, max_sequences=6, max_tokens=14, dynamic_threshold=True, sampling=T06),
}
OTHERS = {
    "eos0": ("Stop!", EagerConfig(max_tokens=8, sampling=T06)),  # finishes at step 0
    "long": ("A much longer prompt than the others, about q", EagerConfig(threshold=1.0, max_sequences=9,
                                                                          max_tokens=5, sampling=T06)),
    "par": ("xy", EagerConfig(parallel=True, max_sequences=3, max_tokens=9, sampling=T06)),
    "short": ("Q", EagerConfig(threshold=0.5, max_sequences=4, max_tokens=3, sampling=SamplingConfig(0.9, top_p=0.9))),
}
BATCHES = [
    ((), ("eos0",)),
    (("long",), ()),
    (("eos0", "short"), ("par",)),
    (("par",), ("long", "eos0", "short")),
    (("short", "long", "eos0"), ()),
]


def tree(result):
    return [(s.index, s.parent, s.branch_step, s.finish_reason, s.token_ids, s.entropies, s.logprobs)
            for s in result.sequences]


def run(model, before, target, after, join_step=0, seed=0):
    """Add `before`, the target "a" (after `join_step` steps), then `after`; return every result."""
    engine = Engine(model, TOK, max_rows=64, seed=seed)
    results = {}

    def step():
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result

    for name in before:
        engine.add(name, TOK.encode(OTHERS[name][0]), OTHERS[name][1])
    for _ in range(join_step):
        step()
    engine.add("a", TOK.encode("Tell me about q"), target)
    for name in after:
        engine.add(name, TOK.encode(OTHERS[name][0]), OTHERS[name][1])
    while engine.has_work:
        step()
    return results


@pytest.mark.parametrize("rule", sorted(TARGETS))
@pytest.mark.parametrize("model_seed", [0, 1, 2])
def test_tree_is_the_same_alone_and_in_any_batch(rule, model_seed):
    model = MarkovModel.random(model_seed)
    alone = run(model, (), TARGETS[rule], ())["a"]
    assert alone.num_sequences > 2  # the tree has branches to get wrong
    for before, after in BATCHES:
        mixed = run(model, before, TARGETS[rule], after)
        assert tree(mixed["a"]) == tree(alone), (before, after)
        assert set(mixed) == {"a", *before, *after}
    late = run(model, ("long", "par"), TARGETS[rule], (), join_step=2)  # joins a batch already decoding
    assert tree(late["a"]) == tree(alone)


def test_other_requests_are_unchanged_by_the_target_too():
    model = MarkovModel.random(3)
    both = run(model, ("long", "short"), TARGETS["fixed"], ("par",))
    for name in ("long", "short", "par"):
        alone = run(model, (name,), TARGETS["fixed"], (), seed=0)
        assert tree(both[name]) == tree(alone[name]), name


def test_the_seed_decides_the_tree():
    model = MarkovModel.random(0)
    a0, a0_again, a1 = (run(model, (), TARGETS["fixed"], (), seed=s)["a"] for s in (0, 0, 1))
    assert tree(a0) == tree(a0_again) and tree(a0) != tree(a1)


def test_request_seed_overrides_the_engine_seed_and_id():
    model = MarkovModel.random(0)
    texts = []
    for engine_seed, rid in ((0, "x"), (5, "y")):
        engine = Engine(model, TOK, max_rows=8, seed=engine_seed)
        engine.add(rid, TOK.encode("Tell me"), TARGETS["fixed"], seed=1234)
        result = None
        while engine.has_work:
            result = next((ev.result for ev in engine.step() if isinstance(ev, RunFinished)), result)
        texts.append([s.text for s in result.sequences])
    assert texts[0] == texts[1]


def test_tiny_llama_tree_alone_and_batched():
    # A real (random) llama: BLAS may round batched matmuls differently (measured: entropies differ by
    # ~1e-6 with OpenBLAS), so tokens and the tree must match and the floats nearly.
    model = tiny_model()
    target = EagerConfig(threshold=2.9, max_sequences=6, max_tokens=24, sampling=T06)
    alone = run(model, (), target, ())["a"]
    assert alone.num_sequences > 2
    for before, after in BATCHES[2:]:
        mixed = run(model, before, target, after)["a"]
        assert [t[:5] for t in tree(mixed)] == [t[:5] for t in tree(alone)], (before, after)
        for s, t in zip(mixed.sequences, alone.sequences):
            np.testing.assert_allclose(s.entropies, t.entropies, atol=1e-4)
            np.testing.assert_allclose(s.logprobs, t.logprobs, atol=1e-4)
