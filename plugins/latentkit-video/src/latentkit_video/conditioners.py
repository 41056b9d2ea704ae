"""Image-to-video conditioning: the first frame's latent as concat conditioning.

As in image-to-video latent models that condition by concatenation (e.g. Stable Video
Diffusion, Blattmann et al. 2023b, and the masked-frame conditioning of Video LDM's
prediction models, Blattmann et al. 2023, Sec. 3.2), the given frame is encoded by the first
stage and stacked onto the noisy latent as extra channels: its latent at latent frame 0, zeros
at the other frames, plus a binary mask channel saying which latent frames are given. The null
conditioning (classifier-free guidance) is all zeros: no frame given.

Text conditioning needs nothing video-specific: any registered text conditioner (e.g.
``openclip_text``) produces ``crossattn`` tokens, which :class:`~latentkit_video.VideoUNet`
gives to every frame; ``combined`` joins text and first-frame conditioning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from latentkit.errors import CompositionError, ShapeError
from latentkit.interfaces import Autoencoder, Conditioner, check_tensor
from latentkit.specs import Conditioning, ConditioningSpec

__all__ = ["FirstFrameConditioner", "first_frame_batch"]


def first_frame_batch(image: torch.Tensor, frames: int, key: str = "video") -> dict[str, torch.Tensor]:
    """The batch for image-to-video sampling: ``image`` (B, C, H, W) as the first frame of a
    ``frames``-frame clip (later frames zero; only their count is read)."""
    if image.ndim != 4:
        raise ShapeError(f"first_frame_batch: image must be (B, C, H, W), got shape {tuple(image.shape)}")
    clip = image.new_zeros(image.shape[0], image.shape[1], frames, *image.shape[2:])
    clip[:, :, 0] = image
    return {key: clip}


class FirstFrameConditioner(Conditioner):
    """Reads clips ``batch[key]`` (B, C, T, H, W) and returns ``concat`` (B, c + 1, T', h, w):
    the normalised latent of frame 0 at latent frame 0 and a mask channel (1 where given).

    The latent comes from the autoencoder bound by :class:`latentkit.LatentDiffusion`
    (``encode_normalized`` of the one-frame clip, posterior mode); unbound, the frame itself
    is used (pixel space) and ``latent_channels`` must equal the data channels.
    """

    #: What the conformance kit reads to pick latent sizes: video latents.
    layout = "CTHW"
    size_multiple = 1

    def __init__(
        self,
        latent_channels: int = 4,  # channels of the bound autoencoder's latent
        key: str = "video",  # batch key of the clips
        channels: int | None = None,  # data channels (default: latent_channels, pixel space)
        dropout: float = 0.0,  # probability of dropping the frame in training (CFG)
    ) -> None:
        if latent_channels < 1:
            raise ValueError(f"FirstFrameConditioner: latent_channels must be >= 1, got {latent_channels}")
        super().__init__(
            output_spec=ConditioningSpec(concat_channels=int(latent_channels) + 1),
            input_keys=(key,),
            dropout=dropout,
            trainable=False,
        )
        self.latent_channels = int(latent_channels)
        self.key = key
        self.channels = int(channels if channels is not None else latent_channels)
        self.__dict__["_autoencoder"] = None  # not a submodule: neither trained nor saved here

    @property
    def autoencoder(self) -> Autoencoder | None:
        """The bound first stage, if any."""
        return self.__dict__["_autoencoder"]  # type: ignore[no-any-return]

    def bind(self, autoencoder: Autoencoder) -> None:
        """Use ``autoencoder`` to encode the first frame; its latent channels must match."""
        spec = autoencoder.latent_spec
        if spec.layout != "CTHW":
            raise CompositionError(
                f"conditioner first_frame needs a video (CTHW) autoencoder, got layout {spec.layout!r}"
            )
        if spec.channels != self.latent_channels:
            raise CompositionError(
                f"conditioner first_frame was built for {self.latent_channels} latent channels, but "
                f"the autoencoder's latents have {spec.channels}; set latent_channels={spec.channels}"
            )
        self.channels = autoencoder.data_spec.channels
        self.__dict__["_autoencoder"] = autoencoder

    def _clips(self, batch: Mapping[str, Any]) -> torch.Tensor:
        self.check_batch(batch)
        return check_tensor(batch[self.key], name=f"batch[{self.key!r}]", owner="FirstFrameConditioner",
                            channels=self.channels, layouts=("CTHW",))

    def _latent_size(self, clips: torch.Tensor) -> tuple[int, ...]:
        ae = self.autoencoder
        if ae is None:
            return tuple(clips.shape[2:])
        return tuple(ae.latent_spec.latent_size(clips.shape[2:]))

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Clips -> ``concat`` with the first frame's latent and the mask channel."""
        clips = self._clips(batch)
        size = self._latent_size(clips)
        frame = clips[:, :, :1].float()  # (B, C, 1, H, W): a one-frame clip
        ae = self.autoencoder
        if ae is None:
            latent = frame
        else:
            param = next(iter(ae.buffers()), None)
            device = param.device if param is not None else frame.device
            with torch.no_grad():
                latent = ae.encode_normalized(frame.to(device), sample=False).to(frame.device)
        out = frame.new_zeros(clips.shape[0], self.latent_channels + 1, *size)
        out[:, : self.latent_channels, :1] = latent
        out[:, self.latent_channels, 0] = 1.0
        return Conditioning(concat=out)

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """No frame given: zeros (mask 0)."""
        clips = self._clips(batch)
        size = self._latent_size(clips)
        return Conditioning(concat=clips.new_zeros(clips.shape[0], self.latent_channels + 1, *size).float())

    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Random clips in [-1, 1] whose latent size is ``latent_size`` (default (3, 4, 4))."""
        size = tuple(latent_size) if latent_size is not None else (3, 4, 4)
        ae = self.autoencoder
        data = tuple(ae.latent_spec.data_size(size)) if ae is not None else size
        clips = torch.rand((batch_size, self.channels, *data), generator=generator) * 2.0 - 1.0
        return {self.key: clips}
