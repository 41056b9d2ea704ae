"""Losses for volumetric first stages: what "reconstruct a shape well" means for a signed
field.

A plain per-voxel L1/L2 loss on a truncated SDF spends almost all of its weight on the
saturated voxels far from the surface (at 16^3, a sphere's surface band holds under a fifth of
the voxels), yet only the band decides where marching cubes puts the surface. So for ``sdf``
fields the reconstruction term is

* **near-surface weighted L1** (as in DeepSDF, Park et al. 2019, which clamps the SDF to a
  band for the same reason): weight ``1 + surface_weight * (1 - |target|)`` on the normalised
  TSDF, i.e. ``1 + surface_weight`` on the surface falling to 1 at the truncation distance;
* plus an **eikonal term** (Gropp et al. 2020, "Implicit Geometric Regularization"):
  ``(|grad d| - 1)^2`` on the voxels inside the truncation band, with ``d`` the decoded field
  in voxel units and the gradient by central differences, so that the decoded field stays a
  distance (its zero crossing then sits where the distances say, and meshes are smooth).

For ``occupancy`` fields the term is binary cross-entropy on "inside" with logits
``-field * logit_scale`` (the field is -1 inside, +1 outside), as in Occupancy Networks
(Mescheder et al. 2019).

:class:`VolumeAutoencoderLoss` puts the chosen term together with the KL regulariser of the
``volume_kl`` autoencoder (Rombach et al. 2022, Sec. 3.1) into a model with ``loss(batch)``
that :class:`latentkit.training.Trainer` trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from latentkit.errors import ShapeError
from latentkit.random import Generators
from torch import nn

__all__ = [
    "VolumeAutoencoderLoss",
    "eikonal_loss",
    "near_surface_weights",
    "occupancy_bce_loss",
    "sdf_l1_loss",
]


def _check_pair(pred: torch.Tensor, target: torch.Tensor, owner: str) -> None:
    if pred.shape != target.shape or pred.ndim != 5:
        raise ShapeError(f"{owner}: expected prediction and target of the same (B, C, D, H, W) shape, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")


def near_surface_weights(target: torch.Tensor, surface_weight: float = 4.0) -> torch.Tensor:
    """``1 + surface_weight * (1 - |target|)`` for a normalised TSDF in [-1, 1]: the largest
    weight on the surface (``target = 0``), 1 at and beyond the truncation distance."""
    return 1.0 + surface_weight * (1.0 - target.abs().clamp(max=1.0))


def sdf_l1_loss(pred: torch.Tensor, target: torch.Tensor, surface_weight: float = 4.0) -> torch.Tensor:
    """Near-surface weighted L1 between normalised TSDFs, per item (B,): the weighted mean
    ``sum(w |pred - target|) / sum(w)`` with ``w`` from :func:`near_surface_weights`."""
    _check_pair(pred, target, "sdf_l1_loss")
    w = near_surface_weights(target, surface_weight)
    dims = tuple(range(1, pred.ndim))
    return (w * (pred - target).abs()).sum(dims) / w.sum(dims)


def eikonal_loss(pred: torch.Tensor, target: torch.Tensor, truncation: float) -> torch.Tensor:
    """Eikonal residual ``(|grad d| - 1)^2`` (Gropp et al. 2020) of the decoded distance
    ``d = pred * truncation`` (voxel units), by central differences on the interior voxels
    whose whole stencil lies inside the truncation band (``|target| < 1 - 1 / truncation``:
    a neighbour one voxel away is then not clipped); per item (B,), 0 for an item without
    such voxels."""
    _check_pair(pred, target, "eikonal_loss")
    if not truncation > 1:
        raise ValueError(f"eikonal_loss: truncation must exceed 1 voxel, got {truncation}")
    d = pred * truncation
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    grads = []
    for axis in (2, 3, 4):
        fwd = [slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1)]
        bwd = list(fwd)
        fwd[axis] = slice(2, None)
        bwd[axis] = slice(None, -2)
        grads.append((d[tuple(fwd)] - d[tuple(bwd)]) / 2.0)
    norm = torch.sqrt(grads[0].square() + grads[1].square() + grads[2].square() + 1e-12)
    band = (target[inner].abs() < 1.0 - 1.0 / truncation).to(pred.dtype)
    dims = tuple(range(1, pred.ndim))
    return (band * (norm - 1.0).square()).sum(dims) / band.sum(dims).clamp(min=1.0)


def occupancy_bce_loss(pred: torch.Tensor, target: torch.Tensor, logit_scale: float = 4.0) -> torch.Tensor:
    """Binary cross-entropy on "inside" (Mescheder et al. 2019) with logits
    ``-pred * logit_scale`` and labels ``target < 0``; per item (B,)."""
    _check_pair(pred, target, "occupancy_bce_loss")
    labels = (target < 0).to(pred.dtype)
    bce = F.binary_cross_entropy_with_logits(-pred * logit_scale, labels, reduction="none")
    return bce.mean(dim=tuple(range(1, pred.ndim)))


class VolumeAutoencoderLoss(nn.Module):
    """Training model for a volumetric KL autoencoder: SDF-aware (or occupancy)
    reconstruction plus ``kl_weight`` times the KL regulariser.

    ``representation="sdf"``: :func:`sdf_l1_loss` + ``eikonal_weight`` * :func:`eikonal_loss`;
    ``"occupancy"``: :func:`occupancy_bce_loss`. ``loss(batch)`` reads ``batch[data_key]``
    (B, 1, D, H, W) and returns ``(loss, terms)`` for the trainer. Only the autoencoder's
    parameters are trained.
    """

    def __init__(
        self,
        autoencoder: nn.Module,  # e.g. latentkit.create("autoencoder", "volume_kl")
        representation: str = "sdf",  # "sdf" or "occupancy", as the data
        truncation: float = 2.0,  # TSDF truncation of the data, in voxels
        surface_weight: float = 4.0,  # extra L1 weight on the surface
        eikonal_weight: float = 0.1,  # weight of the eikonal term (sdf only)
        kl_weight: float = 1e-6,  # KL weight (LDM's value, per data element)
        data_key: str = "volume",
    ) -> None:
        super().__init__()
        if representation not in ("sdf", "occupancy"):
            raise ValueError(f"representation must be 'sdf' or 'occupancy', got {representation!r}")
        self.autoencoder = autoencoder
        self.representation = representation
        self.truncation = float(truncation)
        self.surface_weight = float(surface_weight)
        self.eikonal_weight = float(eikonal_weight)
        self.kl_weight = float(kl_weight)
        self.data_key = data_key

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The autoencoder's parameters."""
        return list(self.autoencoder.parameters())

    def reconstruction_terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-item reconstruction terms (B,) for ``pred`` against ``target``."""
        if self.representation == "occupancy":
            return {"bce": occupancy_bce_loss(pred, target)}
        return {"sdf_l1": sdf_l1_loss(pred, target, self.surface_weight),
                "eikonal": eikonal_loss(pred, target, self.truncation)}

    def loss(self, batch: Mapping[str, Any] | torch.Tensor, *, generator: Generators = None,
             return_terms: bool = True) -> Any:
        """Scalar loss of one batch; with ``return_terms`` also a dict of float terms."""
        x = batch if isinstance(batch, torch.Tensor) else batch[self.data_key]
        reconstruct: Any = self.autoencoder.reconstruct
        out = reconstruct(x, generator=generator, sample_posterior=True)
        terms = self.reconstruction_terms(out.reconstruction, x)
        rec = terms.get("bce", terms.get("sdf_l1"))
        assert rec is not None
        total = rec.mean() + self.kl_weight * out.regularization
        if "eikonal" in terms:
            total = total + self.eikonal_weight * terms["eikonal"].mean()
        if not return_terms:
            return total
        logs = {k: float(v.detach().mean()) for k, v in terms.items()}
        logs["kl"] = float(out.regularization.detach())
        return total, logs

    def forward(self, batch: Mapping[str, Any] | torch.Tensor, **kwargs: Any) -> Any:
        """Same as :meth:`loss`."""
        return self.loss(batch, **kwargs)
