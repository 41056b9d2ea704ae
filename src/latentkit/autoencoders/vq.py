"""VQ-regularised autoencoder (Rombach et al. 2022, Sec. 3.1 "VQ-reg."; van den Oord et al.
2017, "Neural Discrete Representation Learning").

The encoder output is snapped to its nearest codebook vector; gradients pass the snapping
unchanged (straight-through estimator, VQ-VAE Eq. 3's ``sg``). The loss is VQ-VAE's Eq. 3:
``||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2``; with ``ema=True`` the codebook instead follows
an exponential moving average of its assigned encoder outputs (VQ-VAE App. A.1) and only the
commitment term is a loss. Dead codes (EMA usage below ``dead_code_threshold``) are restarted
at random encoder outputs of the current batch (Dhariwal et al. 2020, Jukebox, Sec. 3.3).

As in the paper, the quantizer can sit in the decoder (``quantize_in_decoder=True``, the
default): ``encode`` returns the pre-quantisation latent, the diffusion model works on it,
and ``decode`` quantises before decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import attrs
import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from torch import nn

from latentkit.autoencoders.base import AutoencoderOutput, ConvAutoencoder, resolve_downsampling
from latentkit.autoencoders.nets import Decoder, Encoder, conv_nd
from latentkit.interfaces import DiracDistribution
from latentkit.random import Generators

__all__ = ["VQ_CONFIGS", "QuantizerOutput", "VQAutoencoder", "VectorQuantizer"]

#: Named presets after LDM's vq-f4 / vq-f8 / vq-f16 first stages.
VQ_CONFIGS: dict[str, dict[str, Any]] = {
    "f4": {"latent_channels": 3, "codebook_size": 8192, "channel_multipliers": (1, 2, 4)},
    "f8": {"latent_channels": 4, "codebook_size": 16384, "channel_multipliers": (1, 2, 2, 4)},
    "f16": {"latent_channels": 8, "codebook_size": 16384, "channel_multipliers": (1, 1, 2, 2, 4)},
}

_DEFAULTS: dict[str, Any] = {"base_channels": 128, "num_res_blocks": 2, "norm_num_groups": 32}


@attrs.frozen(eq=False)
class QuantizerOutput:
    """Result of :meth:`VectorQuantizer.forward`."""

    quantized: torch.Tensor  # (B, D, *spatial), straight-through: forward = codes, grad = identity
    loss: torch.Tensor  # scalar VQ loss (codebook + beta * commitment; commitment only with EMA)
    indices: torch.Tensor  # (B, *spatial) long
    perplexity: torch.Tensor  # exp(entropy of the batch's code histogram)
    usage: torch.Tensor  # fraction of codes used in the batch


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantisation with straight-through gradients, for any number of
    spatial axes (the channel axis holds the code dimension)."""

    def __init__(
        self,
        codebook_size: int,  # number of codes K
        dim: int,  # code dimension D (= latent channels)
        *,
        beta: float = 0.25,  # commitment weight (VQ-VAE Eq. 3)
        ema: bool = False,  # EMA codebook updates instead of the codebook loss
        decay: float = 0.99,  # EMA decay
        eps: float = 1e-5,  # Laplace smoothing of the EMA cluster sizes
        dead_code_threshold: float = 0.0,  # restart codes whose EMA usage falls below this
    ) -> None:
        super().__init__()
        self.codebook_size = int(codebook_size)
        self.dim = int(dim)
        self.beta = float(beta)
        self.ema = bool(ema)
        self.decay = float(decay)
        self.eps = float(eps)
        self.dead_code_threshold = float(dead_code_threshold)
        self.embedding = nn.Embedding(self.codebook_size, self.dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / self.codebook_size, 1.0 / self.codebook_size)
        if self.ema:
            self.embedding.weight.requires_grad_(False)
        # EMA of per-code assignment counts: drives EMA updates and dead-code restarts.
        self.cluster_size: torch.Tensor
        self.embed_sum: torch.Tensor
        self.register_buffer("cluster_size", torch.ones(self.codebook_size))
        self.register_buffer("embed_sum", self.embedding.weight.detach().clone())

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, *spatial) -> code vectors (B, D, *spatial)."""
        z = self.embedding(indices)  # (B, *spatial, D)
        return z.movedim(-1, 1)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (N, D), by squared distance."""
        w = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]
        return dist.argmin(dim=1)

    def forward(self, z: torch.Tensor, *, generator: torch.Generator | None = None) -> QuantizerOutput:
        """(B, D, *spatial) -> quantised latent, loss, indices and codebook statistics.

        In training mode with ``ema`` the codebook moves towards the mean of its assigned
        vectors, and codes whose usage falls below ``dead_code_threshold`` restart at random
        vectors of the batch (drawn from ``generator``).
        """
        packed, packed_shape = pack([z], "b d *")
        flat = rearrange(packed, "b d n -> (b n) d")
        indices = self.nearest(flat.detach())
        onehot_counts = torch.bincount(indices, minlength=self.codebook_size).to(flat.dtype)
        if self.training:
            self._update(flat.detach(), indices, onehot_counts, generator)
        quantized_flat = self.embedding(indices)
        commitment = F.mse_loss(flat, quantized_flat.detach())
        if self.ema:
            loss = self.beta * commitment
        else:
            loss = F.mse_loss(quantized_flat, flat.detach()) + self.beta * commitment
        quantized_flat = flat + (quantized_flat - flat).detach()  # straight-through
        (quantized,) = unpack(
            rearrange(quantized_flat, "(b n) d -> b d n", b=z.shape[0]), packed_shape, "b d *"
        )
        probs = onehot_counts / onehot_counts.sum()
        entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
        (idx,) = unpack(rearrange(indices, "(b n) -> b n", b=z.shape[0]), packed_shape, "b *")
        return QuantizerOutput(
            quantized=quantized,
            loss=loss,
            indices=idx,
            perplexity=entropy.exp(),
            usage=(onehot_counts > 0).float().mean(),
        )

    @torch.no_grad()
    def _update(
        self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None
    ) -> None:
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
            self.embedding.weight.copy_(self.embed_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            dead = torch.nonzero(self.cluster_size < self.dead_code_threshold).flatten()
            if dead.numel():
                pick = torch.randint(
                    flat.shape[0], (dead.numel(),), generator=generator,
                    device=generator.device if generator is not None else flat.device,
                ).to(flat.device)
                self.embedding.weight[dead] = flat[pick]
                self.embed_sum[dead] = flat[pick]
                self.cluster_size[dead] = 1.0

    def codebook_usage(self, threshold: float = 1e-3) -> float:
        """Fraction of codes whose EMA assignment share exceeds ``threshold / K``."""
        share = self.cluster_size / self.cluster_size.sum().clamp_min(1e-12)
        return float((share > threshold / self.codebook_size).float().mean())


class VQAutoencoder(ConvAutoencoder):
    """VQ-regularised first stage, any layout. ``config`` names a preset of
    :data:`VQ_CONFIGS` (``"f4"``, ``"f8"``, ``"f16"``); explicit arguments override it."""

    registry_name = "vq"

    def __init__(
        self,
        config: str | None = "f4",  # preset name in VQ_CONFIGS, or None
        *,
        channels: int = 3,  # data channels
        layout: str = "CHW",
        latent_channels: int | None = None,  # code dimension D
        codebook_size: int | None = None,  # number of codes K
        base_channels: int | None = None,
        channel_multipliers: Sequence[int] | None = None,
        num_res_blocks: int | None = None,
        norm_num_groups: int | None = None,
        downsampling: int | Sequence[int] | None = None,
        attention: bool = True,
        dropout: float = 0.0,
        beta: float = 0.25,  # commitment weight
        ema: bool = False,  # EMA codebook updates
        decay: float = 0.99,
        dead_code_threshold: float = 0.0,  # EMA usage count below which a code restarts
        quantize_in_decoder: bool = True,  # encode returns pre-quantisation latents (LDM)
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ) -> None:
        if layout not in self.supported_layouts:
            raise ValueError(f"VQAutoencoder: layout must be one of {self.supported_layouts}, got {layout!r}")
        if config is not None and config not in VQ_CONFIGS:
            raise ValueError(f"VQAutoencoder: unknown config {config!r}; presets: {sorted(VQ_CONFIGS)}")
        preset = {**_DEFAULTS, **(VQ_CONFIGS[config] if config is not None else VQ_CONFIGS["f4"])}
        given: dict[str, Any] = {
            "latent_channels": latent_channels,
            "codebook_size": codebook_size,
            "base_channels": base_channels,
            "channel_multipliers": channel_multipliers,
            "num_res_blocks": num_res_blocks,
            "norm_num_groups": norm_num_groups,
        }
        arch: dict[str, Any] = {k: (preset[k] if v is None else v) for k, v in given.items()}
        arch["channel_multipliers"] = tuple(int(m) for m in arch["channel_multipliers"])
        factors = resolve_downsampling(layout, downsampling, 2 ** (len(arch["channel_multipliers"]) - 1))
        full_config = {
            "config": None,
            "channels": channels,
            "layout": layout,
            **arch,
            "channel_multipliers": list(arch["channel_multipliers"]),
            "downsampling": list(factors),
            "attention": attention,
            "dropout": dropout,
            "beta": beta,
            "ema": ema,
            "decay": decay,
            "dead_code_threshold": dead_code_threshold,
            "quantize_in_decoder": quantize_in_decoder,
            "scaling_factor": scaling_factor,
            "shift_factor": shift_factor,
        }
        super().__init__(
            config=full_config,
            channels=channels,
            latent_channels=arch["latent_channels"],
            layout=layout,
            downsampling=factors,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )
        d = arch["latent_channels"]
        common: dict[str, Any] = {
            "base_channels": arch["base_channels"],
            "channel_multipliers": arch["channel_multipliers"],
            "num_res_blocks": arch["num_res_blocks"],
            "factors_log2": self.net_factors_log2,
            "num_groups": arch["norm_num_groups"],
            "dropout": dropout,
            "attention": attention,
        }
        self.quantize_in_decoder = bool(quantize_in_decoder)
        self.encoder = Encoder(self.net_ndim, channels, d, double_z=False, **common)
        self.decoder = Decoder(self.net_ndim, channels, d, **common)
        self.quant_conv = conv_nd(self.net_ndim, d, d, 1)
        self.post_quant_conv = conv_nd(self.net_ndim, d, d, 1)
        self.quantizer = VectorQuantizer(
            arch["codebook_size"], d, beta=beta, ema=ema, decay=decay,
            dead_code_threshold=dead_code_threshold,
        )

    def _encode_net(self, x: torch.Tensor) -> torch.Tensor:
        h = self.quant_conv(self.encoder(x))
        return h if self.quantize_in_decoder else self.quantizer(h).quantized

    def _distribution(self, params: torch.Tensor) -> DiracDistribution:
        return DiracDistribution(params)

    def _decode_net(self, z: torch.Tensor) -> torch.Tensor:
        if self.quantize_in_decoder:
            z = self.quantizer(z).quantized
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: torch.Tensor) -> DiracDistribution:
        """Data -> point mass at the pre-quantisation latent (or the quantised one when
        ``quantize_in_decoder`` is False)."""
        return self._distribution(self.encode_parameters(x))

    def quantize(self, z: torch.Tensor, *, generator: torch.Generator | None = None) -> QuantizerOutput:
        """Quantise a raw latent (B, D, *latent_spatial) in data layout."""
        z = self.check_latent(z)
        if not self.frame_wise:
            return self.quantizer(z, generator=generator)  # type: ignore[no-any-return]
        frames = z.shape[2]
        out = self.quantizer(rearrange(z, "b c t h w -> (b t) c h w"), generator=generator)
        return attrs.evolve(
            out,
            quantized=rearrange(out.quantized, "(b t) c h w -> b c t h w", t=frames),
            indices=rearrange(out.indices, "(b t) h w -> b t h w", t=frames),
        )

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, *latent_spatial) -> data."""
        codes = self.quantizer.codes(indices)
        return self._run(lambda q: self.decoder(self.post_quant_conv(q)), codes)

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (where the adaptive GAN weight is taken)."""
        return cast(torch.Tensor, self.decoder.conv_out.weight)

    def reconstruct(
        self, x: torch.Tensor, *, generator: Generators = None, sample_posterior: bool = True
    ) -> AutoencoderOutput:
        """Encode, quantise (straight-through) and decode; ``regularization`` is the VQ loss,
        ``logs`` hold the batch's codebook perplexity and usage."""
        h = self._run(lambda t: self.quant_conv(self.encoder(t)), self.check_data(x))
        gen = generator if isinstance(generator, torch.Generator) else None
        q = self.quantize(h, generator=gen)
        rec = self._run(lambda t: self.decoder(self.post_quant_conv(t)), q.quantized)
        return AutoencoderOutput(
            reconstruction=rec,
            latent=h if self.quantize_in_decoder else q.quantized,
            regularization=q.loss,
            regularization_name="codebook",
            logs={
                "codebook_loss": float(q.loss.detach()),
                "perplexity": float(q.perplexity),
                "usage": float(q.usage),
                "ema_usage": self.quantizer.codebook_usage(),
            },
        )
