"""Concatenation conditioning: images, masks or low-resolution inputs brought to the latent's
spatial size and stacked as extra denoiser input channels.

LDM conditions super-resolution on the low-resolution image and inpainting on the mask plus
the masked image by concatenation (Rombach et al. 2022, Sec. 3.3 and 4.4-4.5); Stable
Diffusion's inpainting model concatenates the mask (resized to the latent size) and the
autoencoder's latent of the masked image, 4 + 1 + 4 = 9 input channels. SR3 and the SD x4
upscaler concatenate the (upsampled) low-resolution image (Saharia et al. 2021).

**How the latent size is known.** Every input declares its resolution relative to the data
(``scale`` = data size / input size per axis: 1 for masks and masked images, the upscaling
factor for ``low_res``). The latent size is the data size divided by the downsampling factors:
those of the autoencoder bound by :meth:`ConcatConditioner.bind` (``LatentDiffusion`` binds
its first stage), else the ``downsampling`` config (default 1: pixel space). Inputs with
``encode=True`` are brought to the data size, encoded by the bound autoencoder
(``encode_normalized``, posterior mode) and so come out at the latent size by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F

from latentkit.conditioners.base import BaseConditioner
from latentkit.errors import CompositionError, ShapeError
from latentkit.interfaces import Autoencoder, check_tensor
from latentkit.specs import LAYOUTS, Conditioning, ConditioningSpec, spatial_ndim

__all__ = ["CONCAT_PRESETS", "ConcatConditioner", "ConcatInput"]

_INTERPOLATION = ("nearest", "linear", "area", "cubic")
_NULL = ("same", "zeros")


def _per_axis(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    out: tuple[Any, ...] = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ShapeError(f"ConcatConditioner: {what} must be a positive int or {n} positive ints, got {value!r}")
    return out


@attrs.frozen
class ConcatInput:
    """One concatenated input: batch ``key`` with ``channels`` channels at 1/``scale`` of the
    data resolution; ``encode`` sends it through the bound autoencoder (then it contributes
    the latent channels); ``interpolation`` resizes it to the latent size; ``null`` is what
    the unconditional branch sees (``"same"`` input or ``"zeros"``)."""

    key: str
    channels: int = attrs.field(validator=attrs.validators.gt(0))
    encode: bool = False
    scale: int | tuple[int, ...] = 1  # data size / input size, per axis or one for all
    interpolation: str = attrs.field(default="nearest", validator=attrs.validators.in_(_INTERPOLATION))
    null: str = attrs.field(default="same", validator=attrs.validators.in_(_NULL))


#: Named input lists: SD-style inpainting (mask, then the encoded masked image) and 4x
#: super-resolution (the low-resolution image, linearly upsampled to the latent size).
CONCAT_PRESETS: dict[str, list[dict[str, Any]]] = {
    "inpainting": [
        {"key": "mask", "channels": 1, "encode": False, "interpolation": "nearest"},
        {"key": "masked_image", "channels": 3, "encode": True},
    ],
    "super_resolution": [
        {"key": "low_res", "channels": 3, "encode": False, "scale": 4, "interpolation": "linear"},
    ],
}


def _parse_inputs(inputs: str | Iterable[Mapping[str, Any] | ConcatInput]) -> tuple[ConcatInput, ...]:
    if isinstance(inputs, str):
        if inputs not in CONCAT_PRESETS:
            raise ValueError(f"ConcatConditioner: unknown preset {inputs!r}; presets: {sorted(CONCAT_PRESETS)}")
        inputs = CONCAT_PRESETS[inputs]
    parsed = []
    fields = {a.name for a in attrs.fields(ConcatInput)}
    for item in inputs:
        if isinstance(item, ConcatInput):
            parsed.append(item)
            continue
        unknown = sorted(set(item) - fields)
        if unknown or "key" not in item or "channels" not in item:
            raise ValueError(
                f"ConcatConditioner: each input needs 'key' and 'channels' and may have "
                f"{sorted(fields - {'key', 'channels'})}; got {dict(item)}"
            )
        try:
            parsed.append(ConcatInput(**item))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ConcatConditioner: invalid input {dict(item)}: {exc}") from exc
    keys = [p.key for p in parsed]
    if not parsed or len(set(keys)) != len(keys):
        raise ValueError(f"ConcatConditioner: inputs must be a non-empty list of distinct keys, got {keys}")
    return tuple(parsed)


class ConcatConditioner(BaseConditioner):
    """Batch images / masks / low-resolution inputs -> ``concat`` (B, C, *latent_spatial), the
    inputs' channels stacked in the configured order. Works for every layout (1-3 spatial axes).

    ``output_spec`` is exact before :meth:`bind`: an encoded input contributes
    ``latent_channels`` channels, which must then be given (``bind`` checks it against the
    autoencoder and raises :class:`~latentkit.errors.CompositionError` on a mismatch).
    """

    supported_layouts: ClassVar[tuple[str, ...]] = tuple(LAYOUTS)
    _autoencoder: Autoencoder | None

    def __init__(
        self,
        inputs: str | Iterable[Mapping[str, Any] | ConcatInput] = "inpainting",  # preset or list
        *,
        latent_channels: int | None = None,  # channels of an encoded input (= autoencoder's)
        downsampling: int | Sequence[int] | None = None,  # data/latent factor when unbound
        layout: str | None = None,  # restrict to one layout (None: any rank, or the bound AE's)
        dropout: float = 0.0,  # probability of the null input in training
        trainable: bool = False,  # no parameters of its own (kept for the common interface)
    ) -> None:
        parsed = _parse_inputs(inputs)
        if any(p.encode for p in parsed) and latent_channels is None:
            encoded = [p.key for p in parsed if p.encode]
            raise ValueError(
                f"ConcatConditioner: inputs {encoded} are encoded by the autoencoder; give "
                "latent_channels= (the autoencoder's latent channels, e.g. 4) so that the output "
                "channel count is known before bind"
            )
        if layout is not None:
            spatial_ndim(layout)  # validates
        channels = sum((latent_channels or 0) if p.encode else p.channels for p in parsed)
        super().__init__(
            output_spec=ConditioningSpec(concat_channels=channels),
            input_keys=[p.key for p in parsed],
            dropout=dropout,
            trainable=trainable,
        )
        self.inputs = parsed
        self.latent_channels = latent_channels
        self.layout = layout
        self.downsampling_config = downsampling
        object.__setattr__(self, "_autoencoder", None)  # bound, not a submodule
        self.set_trainable(trainable)  # nothing to train: `trainable` reads False

    # ------------------------------------------------------------------ binding

    @property
    def autoencoder(self) -> Autoencoder | None:
        """The bound autoencoder (``None`` before :meth:`bind`)."""
        return self._autoencoder

    def bind(self, autoencoder: Autoencoder) -> None:
        """Keep ``autoencoder`` for encoding and for the downsampling factors; check that its
        latent channels, data channels and layout fit the configured inputs."""
        me = type(self).__name__
        latent, data = autoencoder.latent_spec, autoencoder.data_spec
        errors = []
        if self.layout is not None and latent.layout != self.layout:
            errors.append(f"{me} is configured for layout {self.layout!r}, the autoencoder makes {latent.layout!r}")
        if self.downsampling_config is not None:
            mine = _per_axis(self.downsampling_config, latent.spatial_ndim, "downsampling")
            if mine != tuple(latent.downsampling):
                errors.append(
                    f"{me} downsampling={mine} differs from the autoencoder's {tuple(latent.downsampling)}"
                )
        for p in self.inputs:
            if not p.encode:
                continue
            if self.latent_channels != latent.channels:
                errors.append(
                    f"{me} input {p.key!r} is encoded to latent_channels={self.latent_channels}, "
                    f"but the autoencoder's latents have {latent.channels} channels"
                )
            if p.channels != data.channels:
                errors.append(
                    f"{me} input {p.key!r} has {p.channels} channels, but the autoencoder encodes "
                    f"{data.channels}-channel data"
                )
        if errors:
            raise CompositionError(f"{type(autoencoder).__name__} cannot be bound: " + "; ".join(errors))
        object.__setattr__(self, "_autoencoder", autoencoder)

    def downsampling(self, ndim: int) -> tuple[int, ...]:
        """Data size / latent size per axis for ``ndim`` spatial axes."""
        if self.autoencoder is not None:
            return tuple(self.autoencoder.latent_spec.downsampling)
        return _per_axis(1 if self.downsampling_config is None else self.downsampling_config, ndim, "downsampling")

    @property
    def size_multiple(self) -> int:
        """Latent sizes must be multiples of this so that every input's size is a whole
        number: an input at 1/``scale`` of the data needs ``latent * downsampling`` divisible
        by ``scale``, i.e. latent sizes divisible by ``scale / gcd(scale, downsampling)``."""
        if self.autoencoder is not None:
            factors: Sequence[int] = self.autoencoder.latent_spec.downsampling
        else:
            cfg = self.downsampling_config
            factors = (1,) if cfg is None else ((cfg,) if isinstance(cfg, int) else tuple(cfg))
        multiple = 1
        for p in self.inputs:
            scales = (p.scale,) if isinstance(p.scale, int) else tuple(p.scale)
            for axis in range(max(len(scales), len(factors))):
                s, f = scales[axis % len(scales)], factors[axis % len(factors)]
                multiple = math.lcm(multiple, s // math.gcd(s, f))
        return multiple

    # ------------------------------------------------------------------ conditioning

    def _layouts(self) -> tuple[str, ...]:
        if self.autoencoder is not None:
            return (self.autoencoder.latent_spec.layout,)
        return (self.layout,) if self.layout is not None else tuple(LAYOUTS)

    def _latent_size(self, p: ConcatInput, x: torch.Tensor, owner: str) -> tuple[int, ...]:
        n = x.ndim - 2
        data = tuple(s * f for s, f in zip(x.shape[2:], _per_axis(p.scale, n, "scale")))
        factors = self.downsampling(n)
        if len(factors) != n:
            raise ShapeError(f"{owner}: batch[{p.key!r}] has {n} spatial axes, the latents {len(factors)}")
        if any(d % f for d, f in zip(data, factors)):
            raise ShapeError(
                f"{owner}: batch[{p.key!r}] of spatial size {tuple(x.shape[2:])} is data size {data}, "
                f"not divisible by the downsampling factors {factors}"
            )
        return tuple(d // f for d, f in zip(data, factors))

    def _resize(self, x: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
        if tuple(x.shape[2:]) == size:
            return x
        n = len(size)
        torch_mode = {
            "nearest": "nearest",
            "area": "area",
            "linear": ("linear", "bilinear", "trilinear")[n - 1],
            "cubic": "bicubic",
        }[mode]
        if mode == "cubic" and n != 2:
            raise ShapeError(f"ConcatConditioner: 'cubic' interpolation needs 2 spatial axes, got {n}")
        kwargs = {"align_corners": False} if mode in ("linear", "cubic") else {}
        return F.interpolate(x, size=size, mode=torch_mode, **kwargs)

    def _encode(self, p: ConcatInput, x: torch.Tensor, latent_size: tuple[int, ...], owner: str) -> torch.Tensor:
        ae = self.autoencoder
        if ae is None:
            raise RuntimeError(
                f"{owner}: input {p.key!r} is encoded by the autoencoder, but none is bound; "
                "call bind(autoencoder) (LatentDiffusion does this at construction)"
            )
        data_size = tuple(s * f for s, f in zip(latent_size, ae.latent_spec.downsampling))
        x = self._resize(x, data_size, p.interpolation)
        param = next(ae.parameters(), None)
        if param is not None:
            x = x.to(param.device, param.dtype)
        with torch.no_grad():  # the first stage is fixed while the denoiser trains (LDM Sec. 3)
            return ae.encode_normalized(x, sample=False)

    def _parts(self, batch: Mapping[str, Any]) -> list[tuple[ConcatInput, torch.Tensor]]:
        owner = self._owner()
        self.check_batch(batch)
        tensors: list[torch.Tensor] = []
        sizes = {}
        for p in self.inputs:
            tensors.append(check_tensor(batch[p.key], name=f"batch[{p.key!r}]", owner=owner,
                                        channels=p.channels, layouts=self._layouts()))
        if len({x.ndim for x in tensors}) > 1:
            found = {p.key: tuple(x.shape) for p, x in zip(self.inputs, tensors)}
            raise ShapeError(f"{owner}: inputs have different numbers of spatial axes: shapes {found}")
        for p, x in zip(self.inputs, tensors):
            sizes[p.key] = self._latent_size(p, x, owner)
        if len(set(sizes.values())) > 1 or len({x.shape[0] for x in tensors}) > 1:
            found = {p.key: tuple(x.shape) for p, x in zip(self.inputs, tensors)}
            raise ShapeError(
                f"{owner}: inputs disagree: shapes {found} give batch sizes "
                f"{[x.shape[0] for x in tensors]} and latent sizes {sizes} (each input's spatial "
                f"size times its scale, over the downsampling factors "
                f"{self.downsampling(tensors[0].ndim - 2)})"
            )
        size = next(iter(sizes.values()))
        out = []
        for p, x in zip(self.inputs, tensors):
            y = self._encode(p, x, size, owner) if p.encode else self._resize(x, size, p.interpolation)
            out.append((p, y))
        return out

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Resize (and encode) every input to the latent size and stack along channels."""
        parts = self._parts(batch)
        dtype = torch.promote_types(*(y.dtype for _, y in parts)) if len(parts) > 1 else parts[0][1].dtype
        return Conditioning(concat=torch.cat([y.to(dtype) for _, y in parts], dim=1))

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """The same stack, with inputs configured ``null="zeros"`` replaced by zeros."""
        parts = self._parts(batch)
        dtype = torch.promote_types(*(y.dtype for _, y in parts)) if len(parts) > 1 else parts[0][1].dtype
        return Conditioning(
            concat=torch.cat(
                [(torch.zeros_like(y) if p.null == "zeros" else y).to(dtype) for p, y in parts], dim=1
            )
        )

    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Inputs whose latent size is ``latent_size`` (default 8 per axis of the layout):
        binary masks for keys containing ``"mask"`` (0/1), uniform [-1, 1] values otherwise."""
        if latent_size is None:
            layout = self._layouts()[0] if len(self._layouts()) == 1 else "CHW"
            latent_size = (8,) * spatial_ndim(layout)
        latent_size = tuple(int(s) for s in latent_size)
        factors = self.downsampling(len(latent_size))
        batch: dict[str, Any] = {}
        for p in self.inputs:
            scale = _per_axis(p.scale, len(latent_size), "scale")
            data = [s * f for s, f in zip(latent_size, factors)]
            if any(d % s for d, s in zip(data, scale)):
                raise ShapeError(
                    f"ConcatConditioner.example_batch: latent size {latent_size} gives data size "
                    f"{tuple(data)}, not divisible by the scale {scale} of input {p.key!r}"
                )
            shape = (batch_size, p.channels, *(d // s for d, s in zip(data, scale)))
            u = torch.rand(shape, generator=generator)
            batch[p.key] = (u < 0.5).float() if "mask" in p.key else 2 * u - 1
        return batch
