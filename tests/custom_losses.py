"""Autoencoder training losses from "another package", named by tests/test_config.py as
``[model] loss = "custom_losses:NAME"``: one that the Trainer can train, and ones that each
lack one thing the config builder must refuse."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from latentkit.random import Generators

__all__ = [
    "NOT_CALLABLE",
    "HalfGAN",
    "L1Loss",
    "NeedsTarget",
    "NoAutoencoder",
    "NoLossMethod",
    "NotAModule",
    "make_l1_loss",
    "plain_object",
]


class L1Loss(nn.Module):
    """L1 reconstruction plus ``kl_weight`` times the autoencoder's regulariser: no more
    than the Trainer needs (a module with ``loss(batch)``)."""

    def __init__(
        self,
        autoencoder: nn.Module,
        kl_weight: float = 1e-6,  # weight of the KL term
        scale: float = 1.0,  # weight of the L1 term; must be > 0
        data_key: str = "image",
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"L1Loss: scale must be > 0, got {scale}")
        self.autoencoder = autoencoder
        self.kl_weight = kl_weight
        self.scale = scale
        self.data_key = data_key

    def loss(self, batch: Mapping[str, Any], *, generator: Generators = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, {"l1", "kl"})`` of one batch."""
        x = batch[self.data_key]
        reconstruct: Any = self.autoencoder.reconstruct
        out = reconstruct(x, generator=generator, sample_posterior=True)
        l1 = (out.reconstruction - x).abs().mean()
        return self.scale * l1 + self.kl_weight * out.regularization, {"l1": l1, "kl": out.regularization}


def make_l1_loss(autoencoder: nn.Module, **options: Any) -> L1Loss:
    """A factory function: its ``**options`` are :class:`L1Loss`'s keywords."""
    return L1Loss(autoencoder, **options)


def plain_object(autoencoder: nn.Module) -> object:
    """Builds something that is not a module."""
    return object()


class NoAutoencoder(nn.Module):
    """Takes the autoencoder under another name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def loss(self, batch: Any) -> torch.Tensor:
        return torch.zeros(())


class NoLossMethod(nn.Module):
    """A module without ``loss``."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder


class NotAModule:
    """Has ``loss`` but is no ``nn.Module``."""

    def __init__(self, autoencoder: nn.Module) -> None:
        self.autoencoder = autoencoder

    def loss(self, batch: Any) -> torch.Tensor:
        return torch.zeros(())


class NeedsTarget(L1Loss):
    """``loss`` wants an argument the Trainer never passes."""

    def loss(self, batch: Mapping[str, Any], target: torch.Tensor) -> Any:  # type: ignore[override]
        return super().loss(batch)


class HalfGAN(L1Loss):
    """Names several optimizers but gives no ``parameters_for``."""

    optimizer_names = ("autoencoder", "discriminator")


NOT_CALLABLE = 3
