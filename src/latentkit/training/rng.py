"""Random-number streams of a training run: saved in checkpoints so that a resumed run draws
what the uninterrupted one would have, and kept untouched by side work (sample grids)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["isolated_rng", "rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator, model: nn.Module, device: torch.device) -> dict[str, Any]:
    """The global streams (Python, NumPy, torch, CUDA on a CUDA ``device``), ``generator``'s,
    and those of every ``torch.Generator`` a submodule of ``model`` keeps as an attribute."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    gens = {}
    for mod_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                gens[f"{mod_name}.{attr}" if mod_name else attr] = value.get_state()
    if gens:
        state["model_generators"] = gens
    return state


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator, model: nn.Module,
                  device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (after a JSON round trip)."""
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    for path, gen_state in state.get("model_generators", {}).items():
        mod_name, _, attr = path.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        getattr(module, attr).set_state(gen_state)


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Leave the global streams as they were after the block (exact resume depends on them)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
