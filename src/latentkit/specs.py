"""What a tensor is: pixel data (:class:`DataSpec`), latents (:class:`LatentSpec`) and
conditioning (:class:`ConditioningSpec`, :class:`Conditioning`).

Nothing in latentkit hard-codes 2-D images or 4 latent channels: shapes come from these specs.
A layout names the axes after the batch axis: ``"CL"`` (1-D signals), ``"CHW"`` (images),
``"CTHW"`` (video) and ``"CDHW"`` (volumes); :data:`DATA_KEYS` names the batch key under which
datasets yield data of each layout.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from latentkit.errors import ShapeError, SpecError

__all__ = [
    "DATA_KEYS",
    "LAYOUTS",
    "Conditioning",
    "ConditioningSpec",
    "DataSpec",
    "LatentSpec",
    "spatial_ndim",
]

#: Every layout latentkit knows, mapped to its number of spatial axes.
LAYOUTS: dict[str, int] = {"CL": 1, "CHW": 2, "CTHW": 3, "CDHW": 3}

#: The batch key of the data tensor for each layout: what datasets yield and what
#: :class:`~latentkit.LatentDiffusion`, the autoencoder losses and latent statistics read.
DATA_KEYS: dict[str, str] = {"CHW": "image", "CTHW": "video", "CDHW": "volume", "CL": "signal"}


def spatial_ndim(layout: str) -> int:
    """Number of spatial axes of ``layout`` (1 for ``"CL"``, 2 for ``"CHW"``, 3 otherwise)."""
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise SpecError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}") from None


def _fail(cls_name: str, field: str, expected: str, value: Any) -> SpecError:
    return SpecError(f"{cls_name}.{field}: expected {expected}, got {value!r}")


def _float_field(cls_name: str, field: str) -> Callable[[Any], float]:
    """attrs converter that turns anything non-numeric into a SpecError naming the field."""

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail(cls_name, field, "a finite number", value)
        return float(value)

    return convert


def _scaling_factor(value: Any) -> float:
    return _float_field("LatentSpec", "scaling_factor")(value)


def _shift_factor(value: Any) -> float:
    return _float_field("LatentSpec", "shift_factor")(value)


def _range_field(value: Any) -> tuple[float, float]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise _fail("DataSpec", "value_range", "a (low, high) pair of numbers", value) from None
    convert = _float_field("DataSpec", "value_range")
    try:
        return convert(lo), convert(hi)
    except SpecError:
        raise _fail("DataSpec", "value_range", "a (low, high) pair of numbers", value) from None


def _check_layout(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in LAYOUTS:
        raise _fail(type(instance).__name__, attribute.name, f"one of {sorted(LAYOUTS)}", value)


def _check_positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(type(instance).__name__, attribute.name, "a positive int", value)


def _check_optional_positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        _check_positive_int(instance, attribute, value)


def _check_finite(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(type(instance).__name__, attribute.name, "a finite number", value)


def _shape_check(spatial: Sequence[int], layout: str, cls_name: str) -> tuple[int, ...]:
    spatial = tuple(int(s) for s in spatial)
    if len(spatial) != spatial_ndim(layout):
        raise ShapeError(
            f"{cls_name} with layout {layout!r} has {spatial_ndim(layout)} spatial axes, "
            f"got spatial shape {spatial}"
        )
    return spatial


@attrs.frozen
class DataSpec:
    """Pixel-space data: ``channels`` along the first non-batch axis, then the spatial axes
    named by ``layout``. Values lie in ``value_range`` (``(-1, 1)`` by default, as in LDM)."""

    channels: int = attrs.field(validator=_check_positive_int)  # e.g. 3 for RGB
    layout: str = attrs.field(default="CHW", validator=_check_layout)
    value_range: tuple[float, float] = attrs.field(default=(-1.0, 1.0), converter=_range_field)

    @value_range.validator
    def _check_range(self, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise _fail("DataSpec", attribute.name, "finite (low, high) with low < high", value)

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes."""
        return LAYOUTS[self.layout]

    @property
    def data_key(self) -> str:
        """The batch key of data in this layout (``"image"``, ``"video"``, ``"volume"`` or
        ``"signal"``; see :data:`DATA_KEYS`)."""
        return DATA_KEYS[self.layout]

    def shape(self, batch_size: int, spatial: Sequence[int]) -> tuple[int, ...]:
        """Full tensor shape for ``batch_size`` items of the given spatial size."""
        return (batch_size, self.channels, *_shape_check(spatial, self.layout, "DataSpec"))


@attrs.frozen
class LatentSpec:
    """What a latent is: channel count, layout, per-axis downsampling factors relative to the
    data, and the normalisation the autoencoder applies (``z_norm = (z - shift) * scale``).

    ``downsampling`` defaults to 1 on every spatial axis; an int is broadcast to all axes.
    """

    channels: int = attrs.field(validator=_check_positive_int)  # latent channels, e.g. 4
    layout: str = attrs.field(default="CHW", validator=_check_layout)
    downsampling: tuple[int, ...] = attrs.field(default=None)  # data size / latent size per axis
    scaling_factor: float = attrs.field(
        default=1.0, converter=_scaling_factor, validator=_check_finite
    )
    shift_factor: float = attrs.field(
        default=0.0, converter=_shift_factor, validator=_check_finite
    )

    def __attrs_post_init__(self) -> None:
        n = LAYOUTS[self.layout]
        value = self.downsampling
        if value is None:
            value = (1,) * n
        elif isinstance(value, int) and not isinstance(value, bool):
            value = (value,) * n
        try:
            value = tuple(value)
        except TypeError:
            raise _fail("LatentSpec", "downsampling", "an int or a tuple of ints", value) from None
        if len(value) != n or any(
            isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in value
        ):
            raise _fail(
                "LatentSpec",
                "downsampling",
                f"{n} positive ints (one per spatial axis of {self.layout!r})",
                self.downsampling,
            )
        if self.scaling_factor == 0:
            raise _fail("LatentSpec", "scaling_factor", "a non-zero number", self.scaling_factor)
        object.__setattr__(self, "downsampling", value)

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes."""
        return LAYOUTS[self.layout]

    def latent_size(self, data_spatial: Sequence[int]) -> tuple[int, ...]:
        """Latent spatial size for data of spatial size ``data_spatial``.

        Raises :class:`~latentkit.errors.ShapeError` naming the nearest valid sizes when a
        data size is not divisible by its factor.
        """
        data_spatial = _shape_check(data_spatial, self.layout, "LatentSpec")
        bad = [(s, f) for s, f in zip(data_spatial, self.downsampling) if s % f]
        if bad:
            nearest = tuple(
                sorted({max(f, (s // f) * f), (s // f + 1) * f})
                for s, f in zip(data_spatial, self.downsampling)
            )
            raise ShapeError(
                f"spatial size {data_spatial} is not divisible by the downsampling factors "
                f"{self.downsampling}; nearest valid sizes per axis: {nearest}"
            )
        return tuple(s // f for s, f in zip(data_spatial, self.downsampling))

    def data_size(self, latent_spatial: Sequence[int]) -> tuple[int, ...]:
        """Data spatial size that encodes to a latent of spatial size ``latent_spatial``."""
        latent_spatial = _shape_check(latent_spatial, self.layout, "LatentSpec")
        return tuple(s * f for s, f in zip(latent_spatial, self.downsampling))

    def shape(self, batch_size: int, latent_spatial: Sequence[int]) -> tuple[int, ...]:
        """Full latent tensor shape for ``batch_size`` items of latent spatial size."""
        spatial = _shape_check(latent_spatial, self.layout, "LatentSpec")
        return (batch_size, self.channels, *spatial)


@attrs.frozen
class ConditioningSpec:
    """The conditioning a conditioner produces, or a denoiser accepts.

    ``crossattn_dim`` is D of ``crossattn`` (B, L, D), ``concat_channels`` is C of ``concat``
    (B, C, *spatial) and ``vector_dim`` is D of ``vector`` (B, D). ``None`` (or 0 channels)
    means the entry is absent.
    """

    crossattn_dim: int | None = attrs.field(default=None, validator=_check_optional_positive_int)
    concat_channels: int = attrs.field(default=0)
    vector_dim: int | None = attrs.field(default=None, validator=_check_optional_positive_int)

    @concat_channels.validator
    def _check_concat(self, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail("ConditioningSpec", attribute.name, "an int >= 0", value)

    @property
    def is_empty(self) -> bool:
        """True when no entry is present."""
        return self.crossattn_dim is None and self.concat_channels == 0 and self.vector_dim is None

    def merge(self, other: ConditioningSpec) -> ConditioningSpec:
        """Spec of two conditionings combined: concat channels add up, cross-attention tokens
        are joined along L (same D required), vectors are joined along D."""
        if (
            self.crossattn_dim is not None
            and other.crossattn_dim is not None
            and self.crossattn_dim != other.crossattn_dim
        ):
            raise SpecError(
                "ConditioningSpec.crossattn_dim: cannot join cross-attention tokens of width "
                f"{self.crossattn_dim} and {other.crossattn_dim} along the token axis"
            )
        vec = None
        if self.vector_dim is not None or other.vector_dim is not None:
            vec = (self.vector_dim or 0) + (other.vector_dim or 0)
        return ConditioningSpec(
            crossattn_dim=self.crossattn_dim if self.crossattn_dim is not None else other.crossattn_dim,
            concat_channels=self.concat_channels + other.concat_channels,
            vector_dim=vec,
        )


def _optional_tensor(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, torch.Tensor):
        raise ShapeError(f"Conditioning.{attribute.name}: expected a Tensor or None, got {type(value).__name__}")


@attrs.frozen(eq=False)
class Conditioning:
    """Conditioning tensors for one batch. Each entry is optional:

    * ``crossattn``: (B, L, D) tokens for cross-attention,
    * ``concat``: (B, C, *spatial) extra input channels, same spatial size as the latent,
    * ``vector``: (B, D) a global vector (added to the timestep embedding).
    """

    crossattn: torch.Tensor | None = attrs.field(default=None, validator=_optional_tensor)
    concat: torch.Tensor | None = attrs.field(default=None, validator=_optional_tensor)
    vector: torch.Tensor | None = attrs.field(default=None, validator=_optional_tensor)

    def __attrs_post_init__(self) -> None:
        if self.crossattn is not None and self.crossattn.ndim != 3:
            raise ShapeError(
                f"Conditioning.crossattn: expected (B, L, D), got shape {tuple(self.crossattn.shape)}"
            )
        if self.vector is not None and self.vector.ndim != 2:
            raise ShapeError(f"Conditioning.vector: expected (B, D), got shape {tuple(self.vector.shape)}")
        if self.concat is not None and self.concat.ndim < 3:
            raise ShapeError(
                f"Conditioning.concat: expected (B, C, *spatial), got shape {tuple(self.concat.shape)}"
            )
        sizes = {name: t.shape[0] for name, t in self.items()}
        if len(set(sizes.values())) > 1:
            raise ShapeError(f"Conditioning entries disagree on the batch size: {sizes}")

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """The present entries as ``(name, tensor)`` pairs."""
        return [(n, t) for n in ("crossattn", "concat", "vector") if (t := getattr(self, n)) is not None]

    @property
    def batch_size(self) -> int | None:
        """Batch size shared by all entries (``None`` when empty)."""
        for _, t in self.items():
            return int(t.shape[0])
        return None

    @property
    def spec(self) -> ConditioningSpec:
        """The :class:`ConditioningSpec` these tensors satisfy."""
        return ConditioningSpec(
            crossattn_dim=None if self.crossattn is None else int(self.crossattn.shape[-1]),
            concat_channels=0 if self.concat is None else int(self.concat.shape[1]),
            vector_dim=None if self.vector is None else int(self.vector.shape[-1]),
        )

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        """Apply ``fn`` to every present entry."""
        return Conditioning(**{n: fn(t) for n, t in self.items()})

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        """``Tensor.to`` on every entry."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Conditioning:
        """Entries detached from the autograd graph."""
        return self.map(lambda t: t.detach())

    def __getitem__(self, index: Any) -> Conditioning:
        """Index the batch axis of every entry."""
        return self.map(lambda t: t[index])

    def repeat_batch(self, n: int) -> Conditioning:
        """Each item repeated ``n`` times along the batch axis (``repeat_interleave``)."""
        return self.map(lambda t: t.repeat_interleave(n, dim=0))

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate conditionings along the batch axis (all must have the same entries)."""
        if not items:
            return Conditioning()
        names = [tuple(n for n, _ in c.items()) for c in items]
        if len(set(names)) != 1:
            raise ShapeError(f"cannot batch conditionings with different entries: {names}")
        return Conditioning(
            **{n: torch.cat([getattr(c, n) for c in items], dim=0) for n in names[0]}
        )

    def join(self, other: Conditioning) -> Conditioning:
        """Combine two conditionings of the same batch: ``crossattn`` tokens concatenated along
        L, ``concat`` along channels and ``vector`` along D (see :meth:`ConditioningSpec.merge`)."""
        self.spec.merge(other.spec)  # validates widths
        out: dict[str, torch.Tensor] = {}
        for name, axis in (("crossattn", 1), ("concat", 1), ("vector", 1)):
            a, b = getattr(self, name), getattr(other, name)
            if a is None or b is None:
                out[name] = a if b is None else b
            else:
                out[name] = torch.cat([a, b], dim=axis)
        return Conditioning(**out)

    def where(self, mask: torch.Tensor, other: Conditioning) -> Conditioning:
        """Per-item choice: ``other``'s item where ``mask`` (B,) is True, this one's elsewhere.

        Used for classifier-free guidance dropout (``other`` is the null conditioning); both
        must hold the same entries with the same shapes.
        """
        out = {}
        for name, t in self.items():
            o = getattr(other, name)
            if o is None or o.shape != t.shape:
                raise ShapeError(
                    f"Conditioning.where: entry {name!r} has shape {tuple(t.shape)} here and "
                    f"{None if o is None else tuple(o.shape)} in the other conditioning"
                )
            m = mask.to(t.device, torch.bool).view(-1, *([1] * (t.ndim - 1)))
            out[name] = torch.where(m, o.to(t.dtype), t)
        return Conditioning(**out)
