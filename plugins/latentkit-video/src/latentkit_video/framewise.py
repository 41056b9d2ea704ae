"""Frame-wise video autoencoder: any registered image autoencoder applied to each frame.

Video LDM (Blattmann et al. 2023, Sec. 3) keeps the image LDM's first stage and encodes every
frame on its own (temporal factor 1); only the decoder is optionally fine-tuned for temporal
consistency. :class:`FrameWiseAutoencoder` does the first part for any image autoencoder:
frames are folded into the batch, so a ``CHW`` autoencoder becomes a ``CTHW`` one with the
same latent channels and spatial factors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import einops
import latentkit
import torch
from latentkit.interfaces import Autoencoder, LatentDistribution
from latentkit.random import Generators
from latentkit.specs import DataSpec, LatentSpec

__all__ = ["FrameWiseAutoencoder", "FrameWiseDistribution", "framewise"]


def _per_frame(generator: Generators, frames: int) -> Generators:
    """Generators for the folded (B T) batch: item i's generator serves its T frames in turn,
    so item i's noise does not depend on the other items."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return [g for g in generator for _ in range(frames)]


class FrameWiseDistribution(LatentDistribution):
    """The image autoencoder's posterior over folded frames, seen as a video posterior."""

    def __init__(self, inner: LatentDistribution, frames: int) -> None:
        self.inner = inner
        self.frames = int(frames)

    def _unfold(self, z: torch.Tensor) -> torch.Tensor:
        return einops.rearrange(z, "(b t) c h w -> b c t h w", t=self.frames)

    def sample(self, generator: Generators = None) -> torch.Tensor:
        """A sample (B, C, T, h, w); per-item generators give batch-independent noise."""
        return self._unfold(self.inner.sample(_per_frame(generator, self.frames)))

    def mode(self) -> torch.Tensor:
        """The mode (B, C, T, h, w)."""
        return self._unfold(self.inner.mode())

    def __getattr__(self, name: str) -> Any:
        # mean / std / kl() of the inner posterior stay reachable (folded over frames)
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class FrameWiseAutoencoder(Autoencoder):
    """A ``CTHW`` autoencoder that runs the image autoencoder ``image`` on every frame.

    Latent spec: the image latent's channels and spatial factors, temporal factor 1. The
    latent normalisation (``scaling_factor``, ``shift_factor``) starts as the image
    autoencoder's and is this module's own buffer afterwards.
    """

    supported_layouts: ClassVar[tuple[str, ...]] = ("CTHW",)

    def __init__(self, image: Autoencoder) -> None:
        if not isinstance(image, Autoencoder):
            raise TypeError(f"FrameWiseAutoencoder needs a latentkit Autoencoder, got {type(image).__name__}")
        if image.data_spec.layout != "CHW":
            raise ValueError(
                f"FrameWiseAutoencoder wraps image (CHW) autoencoders; got layout {image.data_spec.layout!r}"
            )
        spec = image.latent_spec
        super().__init__(
            DataSpec(channels=image.data_spec.channels, layout="CTHW",
                     value_range=image.data_spec.value_range),
            LatentSpec(channels=spec.channels, layout="CTHW", downsampling=(1, *spec.downsampling),
                       scaling_factor=spec.scaling_factor, shift_factor=spec.shift_factor),
        )
        self.image = image

    def encode(self, x: torch.Tensor) -> FrameWiseDistribution:
        """Data (B, C, T, H, W) -> posterior over raw latents (B, c, T, H/f, W/f)."""
        x = self.check_data(x)
        frames = x.shape[2]
        return FrameWiseDistribution(self.image.encode(einops.rearrange(x, "b c t h w -> (b t) c h w")), frames)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, c, T, h, w) -> data (B, C, T, h f, w f)."""
        z = self.check_latent(z)
        frames = z.shape[2]
        x = self.image.decode(einops.rearrange(z, "b c t h w -> (b t) c h w"))
        return einops.rearrange(x, "(b t) c h w -> b c t h w", t=frames)

    @property
    def is_pixel_space(self) -> bool:
        """Whether the wrapped image autoencoder is (``framewise`` around ``identity`` is)."""
        return self.image.is_pixel_space

    @property
    def image_latent_spec(self) -> LatentSpec:
        """The wrapped image autoencoder's latent spec (with this module's normalisation)."""
        return attrs.evolve(self.image.latent_spec, scaling_factor=float(self.scaling_factor),
                            shift_factor=float(self.shift_factor))


def framewise(
    image_autoencoder: str = "identity",  # a registered image autoencoder
    image_config: Mapping[str, Any] | None = None,  # its options (layout is forced to CHW)
    scaling_factor: float | None = None,  # override the image autoencoder's normalisation
    shift_factor: float | None = None,
) -> FrameWiseAutoencoder:
    """Create ``image_autoencoder`` for ``CHW`` through :func:`latentkit.create` and wrap it
    frame by frame. Load trained image weights with ``ae.image.load_state_dict(...)``."""
    config = dict(image_config or {})
    if config.get("layout", "CHW") != "CHW":
        raise ValueError(f"framewise: the image autoencoder must be CHW, image_config has layout {config['layout']!r}")
    config.pop("layout", None)
    info = latentkit.get_plugin_manager().get("autoencoder", image_autoencoder)
    image = info.resolve()
    supported = getattr(image, "supported_layouts", ("CHW",))
    image_ae = latentkit.create("autoencoder", image_autoencoder, **config,
                                **({"layout": "CHW"} if len(tuple(supported)) > 1 else {}))
    ae = FrameWiseAutoencoder(image_ae)
    if scaling_factor is not None or shift_factor is not None:
        spec = ae.latent_spec
        ae.set_latent_statistics(spec.scaling_factor if scaling_factor is None else scaling_factor,
                                 spec.shift_factor if shift_factor is None else shift_factor)
    return ae
