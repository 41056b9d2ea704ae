"""Autoencoder checkpoints: weights in safetensors plus a JSON config; loading never unpickles.

A checkpoint directory holds::

    config.json        {"format": ..., "kind": "autoencoder", "name": "kl", "config": {...}}
    model.safetensors  the state_dict (including the latent normalisation buffers)

:func:`load_pretrained` re-creates the component by name through the plugin registry
(``latentkit.create("autoencoder", name, **config)``) and loads the weights strictly, so a
plugin's autoencoder round-trips exactly like a built-in one.

:func:`save_pretrained` writes each file atomically (:mod:`latentkit.fileio`), the weights
first and ``config.json`` last, so a crash mid-save leaves no half-written file, and a
directory that has a config has its weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from latentkit.fileio import atomic_write, atomic_write_text
from latentkit.interfaces import Autoencoder

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "WEIGHTS_NAME",
    "diffusers_key_map",
    "from_diffusers_state_dict",
    "load_pretrained",
    "save_pretrained",
    "to_diffusers_state_dict",
]

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
    """Write ``model.safetensors`` and ``config.json`` for ``model`` into ``directory``.

    ``name`` is the registry name to re-create it by (default: the name it was created by,
    or its class's ``registry_name``). Each file is written to a temporary sibling and
    renamed into place (:func:`latentkit.fileio.atomic_write`), the weights first and the
    config last: an interrupted save leaves every file whole, old or new, and a fresh
    directory gets its ``config.json`` only once its weights are there. Returns the
    directory.
    """
    found_name, config = _component_name_and_config(model, name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "kind": "autoencoder", "name": found_name, "config": _jsonable(config)}
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    atomic_write(
        directory / WEIGHTS_NAME,
        lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}),
    )
    # last: load_pretrained starts from config.json, so it must never precede its weights
    atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
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


# --------------------------------------------------------------------------- diffusers names


def diffusers_key_map(model: Autoencoder) -> dict[str, str]:
    """Our parameter names -> diffusers ``AutoencoderKL`` names, for a 2-D ``kl`` model.

    The architectures are the same (LDM's), only the names differ: ``down.i.block.j`` is
    ``down_blocks.i.resnets.j``, ``up.i`` is ``up_blocks.(levels-1-i)``, the mid block's
    ``block_1/attn_1/block_2`` are ``resnets.0/attentions.0/resnets.1``. The latent
    normalisation buffers have no diffusers counterpart (diffusers keeps them in its config).
    """
    config = getattr(model, "config", None) or {}
    if getattr(model, "registry_name", None) != "kl" or config.get("layout") != "CHW":
        raise ValueError("diffusers_key_map: only 2-D (CHW) kl autoencoders have a diffusers twin")
    levels = len(config["channel_multipliers"])
    mapping: dict[str, str] = {}
    for key in model.state_dict():
        if key in ("scaling_factor", "shift_factor"):
            continue
        n = key.replace("nin_shortcut", "conv_shortcut")
        for part in ("encoder", "decoder"):
            n = n.replace(f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.")
            n = n.replace(f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.")
            n = n.replace(f"{part}.mid.attn_1.norm.", f"{part}.mid_block.attentions.0.group_norm.")
            for ours, theirs in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
                n = n.replace(f"{part}.mid.attn_1.{ours}.", f"{part}.mid_block.attentions.0.{theirs}.")
            n = n.replace(f"{part}.norm_out.", f"{part}.conv_norm_out.")
        if n.startswith("encoder.down."):
            i, rest = n[len("encoder.down.") :].split(".", 1)
            rest = rest.replace("block.", "resnets.").replace("resample.", "downsamplers.0.")
            n = f"encoder.down_blocks.{i}.{rest}"
        elif n.startswith("decoder.up."):
            i, rest = n[len("decoder.up.") :].split(".", 1)
            rest = rest.replace("block.", "resnets.").replace("resample.", "upsamplers.0.")
            n = f"decoder.up_blocks.{levels - 1 - int(i)}.{rest}"
        mapping[key] = n
    return mapping


def to_diffusers_state_dict(model: Autoencoder) -> dict[str, torch.Tensor]:
    """The weights of a 2-D ``kl`` model under diffusers ``AutoencoderKL`` names."""
    state = model.state_dict()
    return {theirs: state[ours] for ours, theirs in diffusers_key_map(model).items()}


def from_diffusers_state_dict(model: Autoencoder, state: dict[str, torch.Tensor]) -> None:
    """Load diffusers ``AutoencoderKL`` weights (e.g. from a local ``.safetensors`` file)
    into a 2-D ``kl`` model of the same configuration. Attention projections stored as 1x1
    convolutions (older checkpoints) are reshaped to linear weights."""
    own = model.state_dict()
    mapping = diffusers_key_map(model)
    missing = [theirs for theirs in mapping.values() if theirs not in state]
    if missing:
        raise KeyError(f"from_diffusers_state_dict: {len(missing)} weights missing, e.g. {missing[:3]}")
    new = {ours: state[theirs].reshape(own[ours].shape) for ours, theirs in mapping.items()}
    model.load_state_dict(new, strict=False)
