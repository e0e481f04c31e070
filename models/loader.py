"""`load_model`: presets, local mlx-lm directories, GGUF files and hub ids -> a ready mlx-lm model.

Weights are adapted to the backend at load time:
- CPU (the Linux CPU build): every weight becomes float32; quantized layers are
  dequantized first (MLX's quantized matmul is very slow on CPU).
- Metal / CUDA: models converted from GGUF are cast to float16 and their
  quantized-in-GGUF weights quantized again with MLX (4, 5, 6 or 8 bits by the
  GGUF type, group size 32); other models load as mlx-lm stores them. Then the
  numeric load check runs (eager_mlx/engine/numeric_check.py: forked log-probs
  against a plain forward pass) and a model past its tolerance is refused with
  the measured error. On the CPU the test suite proves the same per architecture.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eager_mlx.locks import cache_entry
from eager_mlx.packages import cache_root

from .convert import Progress, convert_gguf, is_converted
from .digests import read_digests, verify_digests
from .errors import ModelError, one_line
from .preset import DEFAULT_MODEL, Preset, get_preset, list_presets
from .sources import gguf_from_packages

__all__ = ["LoadedModel", "load_check_plan", "load_model", "model_dir", "on_cpu", "on_disk", "prepare_model",
           "pull_model"]

_GGUF_BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q3_K": 4, "Q2_K": 4, "IQ4_NL": 4, "IQ4_XS": 4,
              "Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q6_K": 6, "Q8_0": 8}
_GROUP_SIZE = 32

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A loaded model: the mlx-lm module, its TokenizerWrapper, the preset (if any) and its folder.

    It builds engines and encodes prompts the same way for solve, eval, calibrate and the server.
    """

    model: Any  # mlx.nn.Module
    tokenizer: Any  # mlx_lm.tokenizer_utils.TokenizerWrapper
    preset: Preset | None
    path: Path
    name: str = ""  # what the user asked for (preset name, folder, file or hub id)
    load_check: Any = None  # engine.numeric_check.NumericCheck: which check ran at load, and what it found

    @property
    def context_length(self) -> int | None:
        """The preset's context length, else the model config's max_position_embeddings."""
        if self.preset is not None and self.preset.context_length:
            return self.preset.context_length
        return getattr(getattr(self.model, "args", None), "max_position_embeddings", None)

    def engine(self, config: Any = None, *, token_events: bool = True, preempt: bool = False) -> Any:
        """A new `eager_mlx.Engine` over this model (`config`: an EngineConfig, None for the defaults;
        `preempt`: see Engine)."""
        from eager_mlx.config import EngineConfig
        from eager_mlx.engine import Engine

        config = config or EngineConfig()
        config.validate()
        return Engine(self.model, self.tokenizer, max_rows=config.max_rows, seed=config.seed,
                      context_length=self.context_length, token_events=token_events,
                      max_kv_memory=config.max_kv_memory, preempt=preempt, prefix_cache=not config.no_prefix_cache)

    def check_memory(self, rows: int, max_tokens: int) -> None:
        """SettingError when `rows` rows run to `max_tokens` would need more KV cache than this machine has
        (models/memory.py), checked before anything is generated."""
        from .memory import check_kv_fits

        check_kv_fits(self.model, rows, max_tokens, context_length=self.context_length, on_cpu=on_cpu())

    def encode(self, prompt: Any, *, chat: bool = True, system: str | None = None,
               template_args: dict | None = None) -> list[int]:
        """Token ids of text, chat messages or token ids (eager_mlx.prompts.encode_prompt), with the preset's
        chat-template arguments (`template_args` added on top); a preset with `chat = false` (a base model)
        encodes text plainly. Raises PromptError."""
        from eager_mlx.prompts import encode_prompt

        chat = chat and (self.preset is None or self.preset.chat)
        args = dict(self.preset.chat_template_kwargs if self.preset is not None else {}, **(template_args or {}))
        return encode_prompt(self.tokenizer, prompt, chat=chat, chat_template_kwargs=args, system=system)


def model_dir(name: str) -> Path:
    """The cache folder of a converted model: ``~/.cache/eager-mlx/models/NAME``."""
    return cache_root() / "models" / name


def on_disk(preset: Preset) -> bool:
    """Whether the preset's model is ready locally (converted, or in the hub cache)."""
    if preset.hub_id is None:
        return is_converted(model_dir(preset.name))
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(try_to_load_from_cache(preset.hub_id, "config.json"), str)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or ref.count("/") != 1


def prepare_model(ref: str | None = None, progress: Progress | None = None,
                  repair: bool = False) -> tuple[str, Preset | None]:
    """Resolve `ref` to an mlx-lm directory (fetching/converting as needed) or a hub id.

    `ref`: None (the default preset), a preset name, an mlx-lm directory, a .gguf
    file, or a hub id ``OWNER/REPO``. Returns (directory or hub id, preset or None).
    A converted folder is checked against the digests recorded at conversion (models/digests.py): a changed
    file is refused (ModelError), or with `repair` converted again, as is a folder converted before digests
    were recorded.
    """
    if ref is None:
        ref = DEFAULT_MODEL
    if not ref.strip():
        raise ModelError(f"the model name {ref!r} is empty (leave it out for the default, {DEFAULT_MODEL})")
    if ref in {p.name for p in list_presets()}:
        preset = get_preset(ref)
        if preset.hub_id is not None:
            return preset.hub_id, preset
        out = model_dir(preset.name)
        _convert_once(out, lambda: gguf_from_packages(preset, progress), progress, " + ".join(preset.source), repair,
                      f"`eager-mlx models pull {preset.name}` converts it again")
        return str(out), preset
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not an mlx-lm model directory (no config.json)")
        if read_digests(path) is not None:  # a folder eager-mlx converted, used by its path
            _verified(path, f"delete {path} and convert it again")
        return str(path), None
    if path.is_file():
        return str(_converted_gguf(path, progress, repair)), None
    if _looks_like_path(ref):
        if "/" not in ref and not ref.endswith(".gguf"):
            get_preset(ref)  # raises: unknown preset, listing the known ones
        raise ModelError(f"{path}: no such file or directory")
    return ref, None  # a hub id


def pull_model(ref: str, progress: Progress | None = None) -> str:
    """Make `ref` ready on disk (fetch + convert, or download a hub model; a damaged conversion, or one without
    digests, is converted again); return its folder."""
    where, _ = prepare_model(ref, progress, repair=True)
    if Path(where).is_dir():
        return where
    try:
        from huggingface_hub import snapshot_download
        from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

        return snapshot_download(where, allow_patterns=DEFAULT_ALLOW_PATTERNS)
    except Exception as e:  # network and hub errors come in many kinds
        raise ModelError(f"{where}: cannot download from the hub ({one_line(e)})") from None


def _converted_gguf(path: Path, progress: Progress | None, repair: bool) -> Path:
    stat = path.resolve().stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    out = model_dir(f"gguf-{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    _convert_once(out, lambda: nullcontext(path), progress, None, repair,
                  f"`eager-mlx models pull {path}` converts it again")
    return out


def _convert_once(out: Path, gguf: Callable[[], Any], progress: Progress | None, source: str | None,
                  repair: bool, hint: str) -> None:
    """Make `out` a verified conversion of the GGUF `gguf()` yields: one process converts at a time (a killed
    one's temporary folders are removed); an existing conversion is checked against its digests (`hint`: what
    to do when it fails)."""
    if is_converted(out) and not repair:
        _verified(out, hint)
        return
    with cache_entry(out.parent, out.name):
        damaged = is_converted(out) and not _sound(out)
        if not is_converted(out) or damaged:
            with gguf() as gguf_path:
                convert_gguf(gguf_path, out, progress, source=source, replace=damaged)
    _verified(out, hint)


def _sound(out: Path) -> bool:
    """Whether a converted folder has its digests and matches them."""
    try:
        return verify_digests(out) is not None
    except ModelError:
        return False


def _verified(out: Path, hint: str) -> None:
    """Check a converted folder against its digests (ModelError naming the changed file, with `hint`); a folder
    converted before digests were recorded is used with a warning."""
    try:
        if verify_digests(out) is None:
            log.warning("%s was converted before eager-mlx recorded digests, so it is not checked: %s", out, hint)
    except ModelError as e:
        raise ModelError(f"{e}; {hint}") from None


def load_model(ref: str | None = None, progress: Progress | None = None, *,
               numeric_check: bool | None = None) -> LoadedModel:
    """Load a model and its tokenizer, ready for the current backend (see the module docstring).

    `ref` is None (the default preset), a preset name, an mlx-lm directory, a
    .gguf file, or a hub id. Registry-package presets are fetched and converted
    on first use and read from the cache afterwards. `numeric_check`: run the
    numeric load check (None: on a GPU only). Raises ModelError.
    """
    import mlx_lm

    where, preset = prepare_model(ref, progress)
    try:
        model, tokenizer, config = mlx_lm.load(where, lazy=True, return_config=True)
    except ModelError:
        raise
    except Exception as e:  # mlx-lm raises many kinds; keep one line
        raise ModelError(f"{where}: cannot load model ({one_line(e)})") from None
    _adapt_to_backend(model, config)
    if isinstance(tokenizer.eos_token_ids, int):
        tokenizer.eos_token_ids = {tokenizer.eos_token_ids}
    path = Path(where) if Path(where).is_dir() else Path(mlx_lm.utils.hf_repo_to_path(where))
    name = ref or (preset.name if preset is not None else str(path))
    return LoadedModel(model, tokenizer, preset, path, name, _load_check(model, tokenizer, name, numeric_check))


_CPU_PROOF = "there the test suite proves forks exact per architecture, tests/test_architectures.py"


def load_check_plan() -> str:
    """One line: which check a load runs on this machine's default device."""
    import mlx.core as mx

    from eager_mlx.engine.numeric_check import TOLERANCE

    if on_cpu():
        return f"numeric fork check at load: not run on {mx.default_device()}: {_CPU_PROOF}"
    return (f"numeric fork check at load on {mx.default_device()}: a real model's forked log-probs against a plain "
            f"forward pass on every attention path; a model past {TOLERANCE:g} nats is refused")


def _load_check(model: Any, tokenizer: Any, name: str, run: bool | None) -> Any:
    """The numeric load check's record; ModelError when the model fails it (or the engine refuses it)."""
    from eager_mlx.engine.numeric_check import check_numerics, not_run

    if run is None:
        run = not on_cpu()  # by default on a GPU only
    if not run:
        return not_run(_CPU_PROOF if on_cpu() else "switched off")
    try:
        check = check_numerics(model, tokenizer)
    except ValueError as e:  # the engine refuses the model by its structure (engine/probe.py)
        raise ModelError(f"{name}: {one_line(e)}") from None
    if not check.passed:
        raise ModelError(f"{name}: cannot run correctly on this backend: {check.describe()}")
    return check


def on_cpu() -> bool:
    """Whether MLX computes on the CPU (no Metal or CUDA device in use)."""
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.cpu


def _adapt_to_backend(model: Any, config: dict) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import dequantize_model

    if on_cpu():
        dequantize_model(model)
        model.set_dtype(mx.float32)
    else:
        types = config.get("eager_mlx", {}).get("gguf_types")
        if types:
            model.set_dtype(mx.float16)

            def bits_for(path: str, module: Any) -> dict | bool:
                bits = _GGUF_BITS.get(types.get(f"{path}.weight", ""))
                if bits is None or not hasattr(module, "to_quantized"):
                    return False
                if module.weight.shape[-1] % _GROUP_SIZE:
                    return False
                return {"group_size": _GROUP_SIZE, "bits": bits}

            nn.quantize(model, class_predicate=bits_for)
    mx.eval(model.parameters())
