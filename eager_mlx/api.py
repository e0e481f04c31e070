"""The Python API: load a model, encode a prompt, solve it (streaming or in one call)."""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Iterator, Optional

from eager_mlx.adaptive.confidence import ConfidenceConfig
from eager_mlx.config import EagerConfig, SamplingConfig
from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.engine.engine import Engine
from eager_mlx.adaptive.online import OnlineMonitor
from eager_mlx.results import Event, RunFinished, RunResult

__all__ = ["load", "config_for", "encode_prompt", "stream_solve", "solve"]


def load(model: Optional[str] = None, progress=None):
    """Load a model by preset name, mlx-lm folder, .gguf file or hub id (None: the default preset).

    Returns `eager_mlx.models.LoadedModel` (model, tokenizer, preset, path).
    """
    from eager_mlx.models import load_model

    return load_model(model, progress=progress)


def config_for(preset=None, **overrides: Any) -> EagerConfig:
    """An EagerConfig with the preset's recommended settings, then `overrides` (None values ignored).

    Sampling fields (temperature, top_p, top_k, min_p) may be given directly.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    sampling = {k: overrides.pop(k) for k in ("temperature", "top_p", "top_k", "min_p") if k in overrides}
    base: dict[str, Any] = {}
    base_sampling: dict[str, Any] = {}
    if preset is not None:
        base = {"threshold": preset.threshold, "think_end": preset.think_end or None}
        base_sampling = {"temperature": preset.temperature, "top_p": preset.top_p}
    base.update(overrides)
    base_sampling.update(sampling)
    base["sampling"] = dataclasses.replace(SamplingConfig(), **base_sampling)
    return EagerConfig(**base)


def encode_prompt(
    tokenizer,
    text: str,
    *,
    chat: bool = True,
    chat_template_kwargs: Optional[dict] = None,
    system: Optional[str] = None,
) -> list[int]:
    """Token ids for a user message, through the model's chat template when it has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}
        ]
        return list(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, **(chat_template_kwargs or {})
            )
        )
    return list(tokenizer.encode(text))


def _unpack(model, tokenizer):
    """Accept either (model, tokenizer) or a LoadedModel as the first argument."""
    if tokenizer is None:
        return model.model, model.tokenizer, getattr(model, "preset", None)
    return model, tokenizer, None


def stream_solve(
    model,
    prompt: str | list[int],
    config: Optional[EagerConfig] = None,
    *,
    tokenizer=None,
    seed: int = 0,
    chat: bool = True,
    system: Optional[str] = None,
    max_kv_memory: Optional[int] = None,
    cancel: Optional[threading.Event] = None,
    confidence: Optional[ConfidenceConfig] = None,
    consensus: Optional[ConsensusConfig] = None,
) -> Iterator[Event]:
    """Solve one prompt, yielding TokenEvent / BranchEvent / SequenceFinished, then RunFinished.

    `model` is a LoadedModel, or an mlx-lm model with `tokenizer=` given. `prompt` is
    text (chat-templated unless `chat=False`) or token ids. The engine is made on the
    first `next()`: drive the generator from one thread (MLX streams are per thread; start
    a worker with `eager_mlx.threads.start_mlx_thread`). Setting `cancel` (any thread)
    stops the run within one step: rows are freed, RunFinished marks them "aborted".
    `max_kv_memory` (bytes) caps the KV cache: forks that would pass it are skipped and
    generation goes on. `confidence` with a `prune_percentile` prunes low-confidence rows;
    `consensus` aborts the run once its finished answers agree (eager_mlx/adaptive/online.py).
    """
    model, tokenizer, preset = _unpack(model, tokenizer)
    config = config or config_for(preset)
    if isinstance(prompt, str):
        kwargs = preset.chat_template_kwargs if preset is not None else None
        tokens = encode_prompt(tokenizer, prompt, chat=chat, chat_template_kwargs=kwargs, system=system)
    else:
        tokens = list(prompt)
    context = preset.context_length if preset is not None else None
    engine = Engine(
        model, tokenizer, max_rows=config.max_sequences, seed=seed, context_length=context, max_kv_memory=max_kv_memory
    )
    engine.add("0", tokens, config)
    monitor = None
    if consensus is not None or (confidence is not None and confidence.prune_percentile is not None):
        monitor = OnlineMonitor(engine, confidence=confidence, consensus=consensus)
    while engine.has_work:
        if cancel is not None and cancel.is_set():
            yield from engine.abort("0")
            return
        events = engine.step()
        yield from events
        if monitor is not None:
            yield from monitor.feed(events)


def solve(model, prompt: str | list[int], config: Optional[EagerConfig] = None, **kwargs: Any) -> RunResult:
    """Solve one prompt and return its RunResult (sequences, voted answer, token counts)."""
    for event in stream_solve(model, prompt, config, **kwargs):
        if isinstance(event, RunFinished):
            return event.result
    raise RuntimeError("the engine stopped without finishing the request")
