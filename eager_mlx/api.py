"""The Python API: load a model, make a config, solve a prompt (streaming or in one call)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from .adaptive.confidence import ConfidenceConfig
from .adaptive.consensus import ConsensusConfig
from .adaptive.online import OnlineMonitor
from .answers import with_answers
from .config import EagerConfig, EngineConfig, SamplingConfig
from .prompts import Prompt, encode_prompt
from .results import Event, RunFinished, RunResult
from .settings import SettingError, build, check, settings_of

__all__ = ["load", "config_for", "encode_prompt", "stream_solve", "solve"]


def load(model: Optional[str] = None, progress=None, *, numeric_check: Optional[bool] = None):
    """Load a model by preset name, mlx-lm folder, .gguf file or hub id (None: the default preset).

    Returns `eager_mlx.models.LoadedModel` (model, tokenizer, preset, path, load_check; `.engine()`,
    `.encode()`). `numeric_check`: check forked log-probs against a plain forward pass at load (None: on a
    GPU only; engine/numeric_check.py).
    """
    from .models import load_model

    return load_model(model, progress=progress, numeric_check=numeric_check)


def _preset_values(preset) -> dict[str, Any]:
    if preset is None:
        return {}
    return {"threshold": preset.threshold, "temperature": preset.temperature, "top_p": preset.top_p,
            "think_end": preset.think_end or None}


def config_for(preset=None, **settings: Any) -> EagerConfig:
    """An EagerConfig: the defaults, then the preset's recommended values, then `settings` (None values ignored).

    Keys are setting keys (docs/settings.md), e.g. threshold, max_sequences, temperature, top_p.
    Raises SettingError (a ValueError) on an unknown key or a bad value.
    """
    known = {s.key: s for cls in (SamplingConfig, EagerConfig) for s in settings_of(cls)}
    values = _preset_values(preset)
    for key, value in settings.items():
        if key not in known:
            raise SettingError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = check(known[key], value)
    fixed = {"sampling": build(SamplingConfig, values)}
    if "think_end" in values:  # a preset's None (no thinking section) must not fall back to the default
        fixed["think_end"] = values.pop("think_end")
    config = build(EagerConfig, values, **fixed)
    config.validate()
    return config


def _as_loaded(model, tokenizer):
    """A LoadedModel from either a LoadedModel or an mlx-lm model with its tokenizer."""
    if tokenizer is None:
        return model
    from .models import LoadedModel

    return LoadedModel(model, tokenizer, None, Path("."), name="")


def stream_solve(
    model,
    prompt: Prompt,
    config: Optional[EagerConfig] = None,
    *,
    tokenizer=None,
    seed: int = EngineConfig.seed,
    chat: bool = True,
    system: Optional[str] = None,
    max_kv_memory: Optional[int] = None,
    cancel: Optional[threading.Event] = None,
    confidence: Optional[ConfidenceConfig] = None,
    consensus: Optional[ConsensusConfig] = None,
) -> Iterator[Event]:
    """Solve one prompt, yielding TokenEvent / BranchEvent / SequenceFinished, then RunFinished.

    `model` is a LoadedModel, or an mlx-lm model with `tokenizer=` given. `prompt` is
    text (chat-templated unless `chat=False`), chat messages or token ids. The engine is made
    on the first `next()`: drive the generator from one thread (MLX streams are per thread;
    start a worker with `eager_mlx.threads.start_mlx_thread`). Setting `cancel` (any thread)
    stops the run within one step: rows are freed, RunFinished marks them "aborted".
    `max_kv_memory` (bytes) caps the KV cache: forks that would pass it are skipped and
    generation goes on. `confidence` with a `prune_percentile` prunes low-confidence rows;
    `consensus` aborts the run once its finished answers agree (eager_mlx/adaptive/online.py).
    """
    loaded = _as_loaded(model, tokenizer)
    config = config or config_for(loaded.preset)
    config.validate()
    tokens = loaded.encode(prompt, chat=chat, system=system)
    loaded.check_memory(config.max_sequences, config.max_tokens)
    engine = loaded.engine(EngineConfig(max_rows=config.max_sequences, seed=seed, max_kv_memory=max_kv_memory))
    engine.add("0", tokens, config)
    monitor = None
    if consensus is not None or (confidence is not None and confidence.prune_percentile is not None):
        monitor = OnlineMonitor(engine, confidence=confidence, consensus=consensus)
    while engine.has_work:
        if cancel is not None and cancel.is_set():
            yield from _voted(engine.abort("0"))
            return
        events = engine.step()
        yield from _voted(events)
        if monitor is not None:
            yield from _voted(monitor.feed(events))


def _voted(events: list[Event]) -> list[Event]:
    """The events with each RunFinished's answers extracted and voted (the engine returns text only)."""
    return [RunFinished(e.request_id, with_answers(e.result)) if isinstance(e, RunFinished) else e for e in events]


def solve(model, prompt: Prompt, config: Optional[EagerConfig] = None, **kwargs: Any) -> RunResult:
    """Solve one prompt and return its RunResult (sequences, voted answer, token counts)."""
    for event in stream_solve(model, prompt, config, **kwargs):
        if isinstance(event, RunFinished):
            return event.result
    raise RuntimeError("the engine stopped without finishing the request")
