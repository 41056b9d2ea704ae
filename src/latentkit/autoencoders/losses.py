"""Training losses of the first stage (Rombach et al. 2022, Sec. 3.1 and App. G; Esser et al.
2021, "Taming Transformers", Sec. 3.1-3.2).

:class:`AutoencoderTrainingLoss` holds the autoencoder and a patch-based discriminator and
computes, for a batch, either the autoencoder's loss (``optimizer_idx=0``)::

    L_AE = L_rec + w_p * L_perceptual + w_reg * L_reg + lambda * disc_factor * L_G

or the discriminator's loss (``optimizer_idx=1``). ``L_reg`` is the KL term (``kl``) or the VQ
loss (``vq``); ``lambda`` is the adaptive weight of Taming Transformers Eq. 7,
``||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + 1e-4)`` at the decoder's last layer ``G_L``;
``disc_factor`` is 0 before ``disc_start`` steps. Every term is reported in ``logs``.

The perceptual term compares features of a network *the user supplies weights for* (for
example a timm backbone created with ``pretrained=False`` and a local weights file). Without
weights it is off: random features are not a perceptual metric.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from latentkit.autoencoders.base import AutoencoderOutput, ConvAutoencoder
from latentkit.autoencoders.nets import conv_nd
from latentkit.random import Generators
from latentkit.specs import DATA_KEYS

__all__ = [
    "AutoencoderTrainingLoss",
    "LossOutput",
    "NLayerDiscriminator",
    "PerceptualLoss",
    "adaptive_weight",
    "discriminator_loss",
    "generator_loss",
]

_BATCHNORMS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_DATA_KEYS = tuple(DATA_KEYS.values())  # the keys a dict batch's data may sit under


# --------------------------------------------------------------------------- discriminator


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, "pix2pix", App. 6.1.2) for any number of
    spatial axes: ``num_layers`` strided 4-wide convolutions with BatchNorm and LeakyReLU(0.2),
    ending in a map of per-patch real/fake logits.

    With ``time_axis=True`` (video, ``CTHW``) the first axis keeps its resolution (3-wide
    kernel, stride 1), so the patches are spatio-temporal but time is not subsampled.
    """

    def __init__(
        self,
        ndim: int,  # number of spatial axes
        in_channels: int = 3,
        *,
        base_channels: int = 64,
        num_layers: int = 3,
        time_axis: bool = False,
    ) -> None:
        super().__init__()
        bn = _BATCHNORMS[ndim]

        def geometry(stride: int) -> dict[str, Any]:
            kernel = [4] * ndim
            strides = [stride] * ndim
            padding = [1] * ndim
            if time_axis:
                kernel[0], strides[0] = 3, 1
            return {"kernel_size": tuple(kernel), "stride": tuple(strides), "padding": tuple(padding)}

        layers: list[nn.Module] = [
            conv_nd(ndim, in_channels, base_channels, **geometry(2)),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                conv_nd(ndim, base_channels * prev, base_channels * mult, bias=False, **geometry(stride)),
                bn(base_channels * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(conv_nd(ndim, base_channels * mult, 1, **geometry(1)))
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # pix2pix / LDM initialisation.
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> per-patch logits (B, 1, *patch_grid)."""
        return self.main(x)  # type: ignore[no-any-return]


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss: ``"hinge"`` (Lim & Ye 2017) or ``"non_saturating"`` (the original
    GAN objective, Goodfellow et al. 2014, Eq. 1, as softplus)."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    raise ValueError(f"discriminator loss must be 'hinge' or 'non_saturating', got {kind!r}")


def generator_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator (autoencoder) adversarial loss: ``-E[D(x_rec)]`` for hinge (as in Taming
    Transformers / LDM), ``E[softplus(-D(x_rec))]`` for the non-saturating loss."""
    if kind == "hinge":
        return -logits_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"discriminator loss must be 'hinge' or 'non_saturating', got {kind!r}")


def adaptive_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, *, max_weight: float = 1e4
) -> torch.Tensor:
    """Taming Transformers Eq. 7: ``||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + 1e-4)``,
    clamped to ``[0, max_weight]`` and detached (``G_L``: the decoder's last layer)."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(g_grad) + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


# --------------------------------------------------------------------------- perceptual


def _load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PerceptualLoss: weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)  # tensors only, no code
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    return dict(state)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance (Zhang et al. 2018, Eq. 1 with unit channel weights) on the
    features of a user-supplied image network.

    ``backbone`` is a timm model name (created with ``pretrained=False, features_only=True``
    and loaded from ``weights``, a local ``.safetensors`` or tensor-only ``.pt``/``.pth`` file)
    or an ``nn.Module`` returning a list of feature maps. A timm name without ``weights`` is an
    error: random features are not perceptual. Inputs in ``value_range`` are mapped to [0, 1],
    then normalised by ``mean`` / ``std`` (ImageNet's by default). Video is compared frame by
    frame; one-channel data is repeated to three channels.
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        *,
        weights: str | Path | None = None,
        out_indices: Sequence[int] | None = None,  # timm feature levels (default: all)
        value_range: tuple[float, float] = (-1.0, 1.0),
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            if weights is None:
                raise ValueError(
                    f"PerceptualLoss: backbone {backbone!r} needs weights= (a local file): without "
                    "trained weights the perceptual loss is meaningless; leave it off instead"
                )
            import timm

            kwargs: dict[str, Any] = {"pretrained": False, "features_only": True}
            if out_indices is not None:
                kwargs["out_indices"] = tuple(out_indices)
            net = timm.create_model(backbone, **kwargs)
            state = _load_weights(weights)
            missing, _unexpected = net.load_state_dict(state, strict=False)  # heads are unused
            if missing:
                raise ValueError(
                    f"PerceptualLoss: {weights} lacks {len(missing)} weights of {backbone!r}, "
                    f"e.g. {missing[:3]}"
                )
        else:
            net = backbone
            if weights is not None:
                net.load_state_dict(_load_weights(weights))
        self.net = net.eval().requires_grad_(False)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The feature network stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.net.eval()
        return self

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # video / volume: compare slice by slice along the first axis
            x = rearrange(x, "b c t h w -> (b t) c h w")
        if x.ndim != 4:
            raise ValueError(f"PerceptualLoss: needs image-like data (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        lo, hi = self.value_range
        x = (x - lo) / (hi - lo)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-item perceptual distance between ``x`` and ``y``, averaged to a scalar."""
        fx = self.net(self._prepare(x))
        fy = self.net(self._prepare(y))
        if isinstance(fx, torch.Tensor):
            fx, fy = [fx], [fy]
        total = x.new_zeros(())
        for a, b in zip(fx, fy):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (a - b).pow(2).sum(1).mean()
        return total


# --------------------------------------------------------------------------- the loss


@attrs.frozen(eq=False)
class LossOutput:
    """What :meth:`AutoencoderTrainingLoss.loss` returns."""

    loss: torch.Tensor  # scalar to backpropagate
    logs: dict[str, float]  # every term, as floats
    output: AutoencoderOutput  # the autoencoder pass (reuse it for the discriminator step)


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _data_of(batch: torch.Tensor | Mapping[str, Any], key: str | None) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    keys = (key,) if key else _DATA_KEYS
    for k in keys:
        if k in batch:
            return batch[k]  # type: ignore[no-any-return]
    raise KeyError(f"AutoencoderTrainingLoss: batch has none of the keys {keys}; found {sorted(batch)}")


class AutoencoderTrainingLoss(nn.Module):
    """The first stage's training objective with its discriminator: a two-optimizer model.

    * ``loss(batch, optimizer_idx=0, global_step=s)``: autoencoder loss (reconstruction,
      perceptual, KL or codebook, adaptive-weighted GAN term), to step the optimizer over
      ``parameters_for(0)`` (the autoencoder's parameters).
    * ``loss(batch, optimizer_idx=1, global_step=s, output=out)``: discriminator loss on real
      data against the (detached) reconstructions of ``out`` (the previous call's
      ``LossOutput.output``; recomputed when omitted), to step ``parameters_for(1)``. It is
      zero (no gradient) before ``disc_start``.

    Defaults follow LDM's ``LPIPSWithDiscriminator`` / ``VQLPIPSWithDiscriminator`` configs,
    with all terms normalised per data element (see ``KLAutoencoder.reconstruct``).
    """

    optimizer_names: tuple[str, str] = ("autoencoder", "discriminator")

    def __init__(
        self,
        autoencoder: ConvAutoencoder,
        *,
        reconstruction: str = "l1",  # "l1" or "l2" (per-element mean)
        kl_weight: float = 1e-6,  # weight of the KL term (kl autoencoders)
        codebook_weight: float = 1.0,  # weight of the VQ loss (vq autoencoders)
        perceptual: PerceptualLoss | None = None,  # off when None
        perceptual_weight: float = 1.0,
        perceptual_backbone: str | None = None,  # timm name (config-file route to `perceptual`)
        perceptual_weights: str | None = None,  # local weights file for perceptual_backbone
        disc_start: int = 50001,  # first step with the GAN term (and discriminator updates)
        disc_weight: float = 0.5,  # multiplies the adaptive weight
        disc_factor: float = 1.0,  # GAN term scale once started
        disc_loss: str = "hinge",  # "hinge" or "non_saturating"
        disc_num_layers: int = 3,
        disc_channels: int = 64,
        use_adaptive_weight: bool = True,  # else the GAN weight is disc_weight alone
        discriminator: nn.Module | None = None,  # custom discriminator (default: NLayerDiscriminator)
        data_key: str | None = None,  # key of the data tensor in dict batches
    ) -> None:
        super().__init__()
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
        discriminator_loss(torch.zeros(1), torch.zeros(1), disc_loss)  # validates the name
        if perceptual is None and perceptual_backbone is not None:
            perceptual = PerceptualLoss(perceptual_backbone, weights=perceptual_weights)
        if perceptual is not None and autoencoder.data_spec.layout not in ("CHW", "CTHW"):
            raise ValueError(
                f"perceptual loss needs image or video data; layout is {autoencoder.data_spec.layout!r}"
            )
        self.autoencoder = autoencoder
        layout = autoencoder.data_spec.layout
        self.discriminator = discriminator if discriminator is not None else NLayerDiscriminator(
            autoencoder.data_spec.spatial_ndim,
            autoencoder.data_spec.channels,
            base_channels=disc_channels,
            num_layers=disc_num_layers,
            time_axis=layout == "CTHW",
        )
        self.perceptual = perceptual
        self.reconstruction = reconstruction
        self.kl_weight = float(kl_weight)
        self.codebook_weight = float(codebook_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.disc_start = int(disc_start)
        self.disc_weight = float(disc_weight)
        self.disc_factor = float(disc_factor)
        self.disc_loss = disc_loss
        self.use_adaptive_weight = bool(use_adaptive_weight)
        self.data_key = data_key

    def parameters_for(self, optimizer_idx: int) -> list[nn.Parameter]:
        """Trainable parameters of optimizer 0 (autoencoder) or 1 (discriminator)."""
        module = (self.autoencoder, self.discriminator)[optimizer_idx]
        return [p for p in module.parameters() if p.requires_grad]

    def _disc_factor(self, global_step: int) -> float:
        return self.disc_factor if global_step >= self.disc_start else 0.0

    def forward(
        self,
        batch: torch.Tensor | Mapping[str, Any],
        optimizer_idx: int = 0,
        global_step: int = 0,
        *,
        output: AutoencoderOutput | None = None,
        generator: Generators = None,
    ) -> LossOutput:
        """Same as :meth:`loss`."""
        return self.loss(batch, optimizer_idx, global_step, output=output, generator=generator)

    def loss(
        self,
        batch: torch.Tensor | Mapping[str, Any],
        optimizer_idx: int = 0,
        global_step: int = 0,
        *,
        output: AutoencoderOutput | None = None,
        generator: Generators = None,
    ) -> LossOutput:
        """The loss of optimizer ``optimizer_idx`` at ``global_step`` (see the class doc)."""
        x = _data_of(batch, self.data_key)
        if optimizer_idx == 0:
            return self._autoencoder_loss(x, global_step, generator)
        if optimizer_idx == 1:
            if output is None:
                with torch.no_grad():
                    output = self.autoencoder.reconstruct(x, generator=generator)
            return self._discriminator_loss(x, output, global_step)
        raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")

    def _autoencoder_loss(self, x: torch.Tensor, global_step: int, generator: Generators) -> LossOutput:
        out = self.autoencoder.reconstruct(x, generator=generator)
        rec = out.reconstruction
        diff = (x - rec).abs() if self.reconstruction == "l1" else (x - rec).pow(2)
        rec_loss = diff.mean()
        nll = rec_loss
        logs: dict[str, float] = {"rec_loss": float(rec_loss.detach())}
        if self.perceptual is not None and self.perceptual_weight > 0:
            p_loss = self.perceptual(x, rec)
            nll = nll + self.perceptual_weight * p_loss
            logs["perceptual_loss"] = float(p_loss.detach())
        logs["nll_loss"] = float(nll.detach())
        reg_weight = self.kl_weight if out.regularization_name == "kl" else self.codebook_weight
        total = nll + reg_weight * out.regularization
        logs[f"{out.regularization_name}_loss"] = float(out.regularization.detach())
        factor = self._disc_factor(global_step)
        g_loss = x.new_zeros(())
        d_weight = x.new_zeros(())
        if factor > 0:
            with _frozen(self.discriminator):  # gradients reach rec, not D's parameters
                g_loss = generator_loss(self.discriminator(rec), self.disc_loss)
            if self.use_adaptive_weight and torch.is_grad_enabled():
                d_weight = adaptive_weight(nll, g_loss, self.autoencoder.last_layer()) * self.disc_weight
            else:
                d_weight = x.new_tensor(self.disc_weight)
            total = total + d_weight * factor * g_loss
        logs.update(
            g_loss=float(g_loss.detach()),
            d_weight=float(d_weight),
            disc_factor=factor,
            total_loss=float(total.detach()),
        )
        logs.update(out.logs)
        return LossOutput(loss=total, logs=logs, output=out)

    def _discriminator_loss(self, x: torch.Tensor, out: AutoencoderOutput, global_step: int) -> LossOutput:
        factor = self._disc_factor(global_step)
        if factor == 0:
            zero = torch.zeros((), device=x.device, dtype=x.dtype, requires_grad=True)
            return LossOutput(loss=zero, logs={"disc_loss": 0.0, "disc_factor": 0.0}, output=out)
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(out.reconstruction.detach())
        d_loss = factor * discriminator_loss(logits_real, logits_fake, self.disc_loss)
        logs = {
            "disc_loss": float(d_loss.detach()),
            "logits_real": float(logits_real.detach().mean()),
            "logits_fake": float(logits_fake.detach().mean()),
            "disc_factor": factor,
        }
        return LossOutput(loss=d_loss, logs=logs, output=out)
