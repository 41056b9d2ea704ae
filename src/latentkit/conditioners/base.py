"""Shared machinery of the built-in conditioners: frozen/trainable handling, output selection,
input validation and safe loading of local weight files.

A *frozen* conditioner (``trainable=False``) sets ``requires_grad=False`` on its encoder's
parameters, keeps the encoder in eval mode whatever ``train()`` says (so dropout and batch-norm
statistics never change, as LDM's ``FrozenCLIPEmbedder`` does) and runs it without building an
autograd graph. Small learned adapters added on top of a frozen encoder (the projections of
``timm_image``) stay trainable: they are new weights and mean nothing untrained.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from latentkit.errors import ShapeError
from latentkit.interfaces import Conditioner

__all__ = [
    "BaseConditioner",
    "as_label_tensor",
    "as_pair_tensor",
    "as_string_list",
    "load_weights_file",
    "parse_outputs",
    "set_conditioner_trainable",
]

def parse_outputs(
    outputs: str | Iterable[str], allowed: Sequence[str], owner: str
) -> tuple[str, ...]:
    """Normalise an ``outputs`` config (``"vector"``, ``["crossattn", "vector"]``, ``"both"``)
    to a tuple of entry names, in the order of ``allowed``; unknown names raise ``ValueError``."""
    if isinstance(outputs, str):
        names = list(allowed) if outputs == "both" else [outputs]
    else:
        names = list(outputs)
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(
            f"{owner}: outputs must be a non-empty subset of {list(allowed)} (or 'both'), "
            f"got {outputs!r}"
        )
    return tuple(n for n in allowed if n in names)


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from a local file, safely, through
    :func:`latentkit.checkpoint_files.read_checkpoint`: ``.safetensors`` checked and
    memory-mapped, anything else through ``torch.load(weights_only=True)``; a pickle that
    names code is refused with a :class:`~latentkit.errors.CheckpointError` that says so
    (nothing runs).

    A checkpoint that nests its weights under ``state_dict``, ``model`` or ``module`` is
    unwrapped, and a ``module.`` prefix (DataParallel / DDP) is stripped.
    """
    from latentkit.checkpoint_files import read_checkpoint

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    state = read_checkpoint(path).state
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def as_string_list(value: Any, *, key: str, owner: str) -> list[str]:
    """Validate a batch entry that must be a sequence of strings (e.g. ``caption``)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ShapeError(
            f"{owner}: batch[{key!r}] must be a list of strings (one per item), "
            f"got {type(value).__name__}"
        )
    bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
    if bad:
        raise ShapeError(
            f"{owner}: batch[{key!r}] must hold strings; item {bad[0]} is "
            f"{type(value[bad[0]]).__name__}"
        )
    return list(value)


def as_label_tensor(value: Any, *, key: str, owner: str, high: int, null: bool = False) -> torch.Tensor:
    """Validate integer labels (B,) in ``[0, high]`` and return them as a LongTensor; with
    ``null``, ``high`` is the null (unconditional) label and the message says so."""
    t = torch.as_tensor(value)
    if t.ndim != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ShapeError(
            f"{owner}: batch[{key!r}] must be an integer tensor of shape (B,), got "
            f"shape {tuple(t.shape)} and dtype {t.dtype}"
        )
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > high):
        meaning = f" (the classes 0..{high - 1}, and {high} for the null label)" if null else ""
        raise ShapeError(
            f"{owner}: batch[{key!r}] must lie in [0, {high}]{meaning}, got values in "
            f"[{int(t.min())}, {int(t.max())}]"
        )
    return t


def as_pair_tensor(value: Any, *, key: str, owner: str, batch: int | None = None) -> torch.Tensor:
    """Validate a (B, 2) numeric batch entry (sizes, crop offsets) and return it as float64."""
    t = torch.as_tensor(value)
    if t.ndim != 2 or t.shape[1] != 2 or t.is_complex() or t.dtype == torch.bool:
        raise ShapeError(
            f"{owner}: batch[{key!r}] must have shape (B, 2), got shape {tuple(t.shape)}"
        )
    if batch is not None and t.shape[0] != batch:
        raise ShapeError(
            f"{owner}: batch[{key!r}] has {t.shape[0]} items, expected {batch} like the other keys"
        )
    return t.to(torch.float64)


def set_conditioner_trainable(conditioner: Conditioner, trainable: bool) -> None:
    """Freeze or unfreeze any conditioner: built-ins through :meth:`BaseConditioner.set_trainable`,
    third-party ones by setting ``requires_grad`` on all their parameters."""
    if isinstance(conditioner, BaseConditioner):
        conditioner.set_trainable(trainable)
    else:
        conditioner.trainable = bool(trainable)
        conditioner.requires_grad_(bool(trainable))


class BaseConditioner(Conditioner):
    """A :class:`~latentkit.interfaces.Conditioner` with frozen-encoder handling.

    Subclasses list the modules that ``trainable=False`` freezes in :meth:`frozen_modules`
    (default: every child module) and call :meth:`set_trainable` once their modules exist.
    ``encoder_trainable`` keeps the configured flag; the ``trainable`` attribute of the
    interface then says whether anything is left to train (a frozen encoder under a learned
    projection is still trainable as a whole, and :class:`~latentkit.LatentDiffusion` trains
    exactly the parameters with ``requires_grad``).
    """

    encoder_trainable: bool = True

    def frozen_modules(self) -> list[nn.Module]:
        """Modules frozen when ``trainable`` is False (the pretrained encoder)."""
        return list(self.children())

    def set_trainable(self, trainable: bool) -> None:
        """Freeze (``requires_grad=False``, eval mode) or unfreeze the encoder."""
        self.encoder_trainable = bool(trainable)
        for module in self.frozen_modules():
            module.requires_grad_(self.encoder_trainable)
            if not self.encoder_trainable:
                module.eval()
            else:
                module.train(self.training)
        self.trainable = any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> BaseConditioner:
        """``nn.Module.train``, but a frozen encoder stays in eval mode."""
        super().train(mode)
        if not self.encoder_trainable:
            for module in self.frozen_modules():
                module.eval()
        return self

    def encoder_grad(self) -> torch.autograd.grad_mode.set_grad_enabled:
        """Context manager: build a graph through the encoder only when it is trainable."""
        return torch.set_grad_enabled(self.encoder_trainable and torch.is_grad_enabled())

    def _owner(self, method: str = "forward") -> str:
        return f"{type(self).__name__}.{method}"
