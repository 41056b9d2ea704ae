"""Autoencoder checkpoints: weights in safetensors plus a JSON config; loading never unpickles.

A checkpoint directory holds::

    config.json        {"format": ..., "kind": "autoencoder", "name": "kl", "config": {...}}
    model.safetensors  the state_dict (including the latent normalisation buffers)

:func:`load_pretrained` re-creates the component by name through the plugin registry
(``latentkit.create("autoencoder", name, **config)``) and loads the weights strictly, so a
plugin's autoencoder round-trips exactly like a built-in one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from latentkit.interfaces import Autoencoder

__all__ = ["CONFIG_NAME", "FORMAT", "WEIGHTS_NAME", "load_pretrained", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "latentkit-autoencoder/1"


def _component_name_and_config(model: Autoencoder, name: str | None) -> tuple[str, dict[str, Any]]:
    if name is None:
        name = getattr(model, "latentkit_name", (None, None))[1] or getattr(model, "registry_name", None)
    if name is None:
        raise ValueError(
            f"save_pretrained: {type(model).__name__} has no registry name; create it with "
            "latentkit.create('autoencoder', name, ...) or pass name="
        )
    config = getattr(model, "config", None)
    if config is None:
        config = getattr(model, "latentkit_config", None)
    if config is None:
        raise ValueError(f"save_pretrained: {type(model).__name__} has no config to save")
    return str(name), dict(config)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"save_pretrained: config value {value!r} is not JSON-serialisable")


def save_pretrained(model: Autoencoder, directory: str | Path, *, name: str | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``directory``.

    ``name`` is the registry name to re-create it by (default: the name it was created by,
    or its class's ``registry_name``). Returns the directory.
    """
    found_name, config = _component_name_and_config(model, name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "kind": "autoencoder", "name": found_name, "config": _jsonable(config)}
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": FORMAT})
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_pretrained(
    directory: str | Path, *, device: str | torch.device = "cpu", **overrides: Any
) -> Autoencoder:
    """Re-create the autoencoder saved in ``directory`` and load its weights (strictly).

    ``overrides`` replace config entries that do not change the weights' shapes (e.g.
    ``dropout``). Uses safetensors only: nothing is unpickled.
    """
    import latentkit

    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"load_pretrained: no {CONFIG_NAME} in {directory}")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT or meta.get("kind") != "autoencoder":
        raise ValueError(
            f"load_pretrained: {config_path} has format {meta.get('format')!r} and kind "
            f"{meta.get('kind')!r}; expected {FORMAT!r} and 'autoencoder'"
        )
    config = {**meta["config"], **overrides}
    model: Autoencoder = latentkit.create("autoencoder", meta["name"], **config)
    state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
    model.load_state_dict(state, strict=True)
    return model.to(device)
