"""The model protocol: what the :class:`~latentkit.training.Trainer` calls on a model.

* ``model.loss(batch)`` returns the scalar loss as a tensor, or ``(loss, terms)``, or a dict
  with a ``"loss"`` entry, or an object with ``.loss`` (and optionally ``.logs`` with the
  terms and ``.output``). Keyword arguments the method declares are filled in by the
  trainer: ``global_step`` (optimizer steps done so far), ``generator`` (the trainer's seeded
  ``torch.Generator``, saved in checkpoints), ``return_terms=True``.
* Several optimizers (GAN-style autoencoder training): the model declares
  ``optimizer_names`` (one name per optimizer) and ``parameters_for(idx)``; each step the
  trainer calls ``loss(batch, optimizer_idx=idx, ...)`` for every ``idx`` in order, each on
  the same micro-batches, and steps that optimizer alone. When ``loss`` takes ``output``, the
  ``.output`` of optimizer ``idx - 1``'s result on the same micro-batch is passed on (so the
  discriminator reuses the reconstructions). Optional ``optimizer_options(idx)`` overrides
  ``lr``, ``betas``, ``eps`` or ``weight_decay`` for one optimizer.
* Optional: ``trainable_parameters()`` (default: every parameter with ``requires_grad``),
  ``compile_targets()`` (the modules ``compile = true`` compiles; default: the whole loss).

:func:`trainability_problem` checks a model against this protocol before any step, so that a
config naming a model the trainer cannot train fails when it is built, with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "LOSS_KEYWORDS",
    "MULTI_OPTIMIZER",
    "LossModule",
    "compile_loss",
    "loss_parameters",
    "split_loss_output",
    "trainability_problem",
    "uses_several_optimizers",
]

#: The keywords the trainer passes to ``loss`` when the method declares them.
LOSS_KEYWORDS = ("global_step", "generator", "return_terms")
#: The attributes by which a model asks for several optimizers (both or neither).
MULTI_OPTIMIZER = ("optimizer_names", "parameters_for")


def uses_several_optimizers(model: Any) -> bool:
    """Whether ``model`` declares the several-optimizers protocol."""
    return all(hasattr(model, a) for a in MULTI_OPTIMIZER)


def loss_parameters(model: nn.Module) -> set[str]:
    """The parameter names of ``model.loss``; a ``TypeError`` when it has no usable one."""
    try:
        return set(inspect.signature(getattr(model, "loss")).parameters)  # noqa: B009
    except (AttributeError, TypeError, ValueError) as exc:
        raise TypeError(
            f"{type(model).__name__} has no usable loss(batch) method: the trainer "
            "needs model.loss(batch) -> loss (see docs/training.md)"
        ) from exc


def trainability_problem(model: Any, built_by: str) -> str | None:
    """Why the trainer cannot train ``model`` (built by ``built_by``, named in the message),
    or ``None``: not an ``nn.Module``, no ``loss(batch)`` callable the way the trainer calls
    it, or half of the several-optimizers protocol."""
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        return (f"expected {built_by!r} to build a torch.nn.Module (the Trainer moves, checkpoints "
                f"and optimizes the model as a module), found a value of type {name}")
    declared = [a for a in MULTI_OPTIMIZER if hasattr(model, a)]
    if len(declared) == 1:
        missing = next(a for a in MULTI_OPTIMIZER if a not in declared)
        return (f"{name} has {declared[0]} but no {missing}; the Trainer needs both for several "
                "optimizers (or neither for one)")
    loss_fn = getattr(model, "loss", None)
    if not callable(loss_fn):
        return (f"expected {name} to have a loss(batch) method, which the Trainer calls every "
                "step (docs/training.md, 'The model protocol'); found none")
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError) as exc:
        return (f"cannot read the signature of {name}.loss ({exc}); the Trainer inspects it "
                "to pass global_step, generator and return_terms")
    kwargs: dict[str, Any] = {k: None for k in LOSS_KEYWORDS if k in sig.parameters}
    if len(declared) == 2:
        kwargs["optimizer_idx"] = 0
    try:
        sig.bind(None, **kwargs)
    except TypeError as exc:
        shown = "".join(f", {k}=..." for k in kwargs)
        shown_sig = sig.replace(return_annotation=inspect.Signature.empty)
        return (f"expected {name}.loss to accept the Trainer's call loss(batch{shown}); its "
                f"signature {shown_sig} does not: {exc}")
    return None


def split_loss_output(out: Any) -> tuple[torch.Tensor, dict[str, float], Any]:
    """``(loss, terms, output)`` from whatever ``model.loss`` returned (see the module doc)."""
    terms: Mapping[str, Any] = {}
    output = None
    if isinstance(out, torch.Tensor):
        loss = out
    elif isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], Mapping):
        loss, terms = out
    elif isinstance(out, Mapping):
        if "loss" not in out:
            raise TypeError(f"model.loss returned a dict without a 'loss' entry (keys {sorted(out)})")
        loss = out["loss"]
        terms = {k: v for k, v in out.items() if k != "loss"}
    elif hasattr(out, "loss"):
        loss = out.loss
        terms = getattr(out, "logs", None) or {}
        output = getattr(out, "output", None)
    else:
        raise TypeError(
            "model.loss must return a tensor, (loss, terms), a dict with 'loss', or an object "
            f"with a .loss attribute; got {type(out).__name__}"
        )
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"model.loss: the loss must be a tensor, got {type(loss).__name__}")
    if loss.ndim > 0:
        loss = loss.mean()
    floats = {}
    for k, v in terms.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            floats[k] = float(v.detach())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            floats[k] = float(v)
    return loss, floats, output


class LossModule(nn.Module):
    """Routes ``forward`` to ``model.loss`` so DDP and ``torch.compile`` see the loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, kwargs: dict[str, Any]) -> Any:
        """``(loss tensor or None, the raw result of model.loss(batch, **kwargs))``."""
        model: Any = self.model
        out = model.loss(batch, **kwargs)
        # DDP with find_unused_parameters looks for the loss among the tensors of forward's
        # output (tensors, tuples, dicts), not inside objects such as a LossOutput; the loss
        # goes next to the raw result so that it finds it.
        loss = getattr(out, "loss", None)
        return (loss if isinstance(loss, torch.Tensor) else None), out


def compile_loss(model: nn.Module, loss_module: nn.Module) -> nn.Module:
    """``torch.compile`` for training: the modules ``model.compile_targets()`` names, in
    place (same parameters, same state-dict keys), and ``loss_module`` as it is; the whole
    ``loss_module`` compiled when the model names none."""
    get_targets = getattr(model, "compile_targets", None)
    targets: list[nn.Module] | None = get_targets() if callable(get_targets) else None
    if not targets:
        return torch.compile(loss_module)  # type: ignore[return-value]
    for module in targets:
        module.compile()
    return loss_module
