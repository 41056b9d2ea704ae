"""One sampling pipeline: conditioning batch from prompts or labels, latent size from the data
or a pixel size, sample (txt2img, img2img, inpainting), then the writers
(:mod:`latentkit.samples.writers`).

``latentkit sample`` and ``latentkit eval``, the trainer's ``sample_every`` grids and the
quickstart all go through these functions, so a prompt reaches the model the same way from
each of them::

    batch, captions = conditioning_batch(model, prompts=["a red circle"], num=4)
    drawn = draw(model, batch, captions, latent_size=latent_size(model, dataset=data),
                 sampler="dpmpp_2m", steps=20, guidance_scale=3.0, seed=0)
    write_samples(drawn, "grid.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import default_collate

from latentkit.errors import ShapeError

__all__ = ["Samples", "conditioning_batch", "draw", "latent_size", "read_image", "reconstructions"]


@attrs.frozen
class Samples:
    """Drawn samples, ready for the writers."""

    images: torch.Tensor = attrs.field(repr=False)  # (N, C, *spatial), float32 on the CPU, clamped to value_range
    captions: list[str] | None  # one per sample (the prompt or "label N"), None when unconditional
    value_range: tuple[float, float]  # the data's range (autoencoder.data_spec.value_range)
    layout: str | None  # the data layout ("CHW", "CTHW", "CDHW", ...): picks the writer; None: the grid


def _input_keys(model: Any) -> tuple[str, ...]:
    conditioner = getattr(model, "conditioner", None)
    return tuple(getattr(conditioner, "input_keys", ()) or ()) if conditioner is not None else ()


def _item_captions(items: Sequence[Mapping[str, Any]]) -> list[str] | None:
    if items and all("caption" in it for it in items):
        return [str(it["caption"]) for it in items]
    if items and all("label" in it for it in items):
        return [f"label {int(it['label'])}" for it in items]
    return None


def conditioning_batch(
    model: Any,
    *,
    prompts: Sequence[str] = (),
    labels: Sequence[int] = (),
    num: int = 1,
    items: Sequence[Mapping[str, Any]] | None = None,
    names: tuple[str, str] = ("prompts", "labels"),
) -> tuple[dict[str, Any] | int, list[str] | None]:
    """The batch ``model.sample`` takes, and one caption per sample.

    ``prompts`` (batch key ``caption``) or else ``labels`` (``label``), each repeated ``num``
    times in a row; else the conditioning inputs of dataset ``items``; else ``num``
    unconditional samples. A model conditioned on something else than what is given is a
    ``ValueError``; ``names`` are how the messages call prompts and labels (``--prompt`` on
    the command line, ``sample_prompts`` in a config).
    """
    keys = _input_keys(model)
    prompt_name, label_name = names
    if prompts:
        if keys and "caption" not in keys:
            raise ValueError(f"{prompt_name} needs a text-conditioned model; this one reads {list(keys)} "
                             f"(use {label_name} for class labels)")
        repeated = [p for p in prompts for _ in range(num)]
        return {"caption": repeated}, repeated
    if labels:
        if "label" not in keys:
            raise ValueError(f"{label_name} needs a class-conditioned model; this one reads "
                             f"{list(keys) or 'nothing'}")
        values = [int(v) for v in labels for _ in range(num)]
        return {"label": torch.tensor(values, dtype=torch.long)}, [f"label {v}" for v in values]
    if keys and items:
        missing = sorted({k for it in items for k in keys if k not in it})
        if missing:
            raise ValueError(f"the conditioner reads batch keys {list(keys)}, which the dataset items "
                             f"lack ({missing}); give {prompt_name} or {label_name}")
        return default_collate([{k: it[k] for k in keys} for it in items]), _item_captions(items)
    if keys:
        raise ValueError(f"this model is conditioned on {list(keys)}: pass {prompt_name} (or {label_name})")
    return num, None


def latent_size(model: Any, *, pixels: Sequence[int] | None = None, dataset: Any = None) -> tuple[int, ...] | None:
    """The latent spatial size to sample at: from ``pixels`` (the data size, one value for
    every axis or one per axis), else ``None`` when the model has its own ``latent_size``,
    else from the first item of ``dataset`` (its cached ``latents``, or its data through the
    autoencoder's downsampling); ``None`` when nothing tells."""
    spec = getattr(getattr(model, "autoencoder", None), "latent_spec", None)
    if spec is None:
        return None
    if pixels:
        sizes = tuple(int(p) for p in pixels) * (len(spec.downsampling) if len(pixels) == 1 else 1)
        return _fitting(model, spec, sizes)
    if getattr(model, "latent_size", None) is not None:
        return None  # the model knows
    if dataset is None or len(dataset) == 0:
        return None
    item = dataset[0]
    if isinstance(item.get("latents"), torch.Tensor):
        return tuple(int(s) for s in item["latents"].shape[1:])
    x = item.get(getattr(dataset, "data_key", "image"))
    return tuple(spec.latent_size(tuple(x.shape[1:]))) if isinstance(x, torch.Tensor) else None


def _fitting(model: Any, spec: Any, pixels: tuple[int, ...]) -> tuple[int, ...]:
    """The latent size of data of ``pixels``, or a ShapeError in pixels when the autoencoder's
    downsampling or the denoiser's size multiple refuses it (both fixed together: the data
    size must be a multiple of their product), naming the nearest sizes that fit."""
    spatial_multiples = getattr(getattr(model, "denoiser", None), "spatial_multiples", None)
    multiples = spatial_multiples(spec.layout) if callable(spatial_multiples) else (1,) * len(pixels)
    try:
        latent = tuple(spec.latent_size(pixels))
    except ShapeError:
        latent = tuple(max(1, round(p / f)) for p, f in zip(pixels, spec.downsampling))
    else:
        if all(s % m == 0 for s, m in zip(latent, multiples)):
            return latent
    lower = tuple(max(m, (s // m) * m) for s, m in zip(latent, multiples))
    upper = tuple(lo + m for lo, m in zip(lower, multiples))
    nearest = [sorted({a, b}) for a, b in zip(spec.data_size(lower), spec.data_size(upper))]
    step = tuple(f * m for f, m in zip(spec.downsampling, multiples))
    raise ShapeError(f"image size {pixels} (pixels) does not fit this model: each axis must be a multiple of {step} "
                     f"(the autoencoder's downsampling {tuple(spec.downsampling)} times the denoiser's size "
                     f"multiple {tuple(multiples)}); nearest sizes that fit, per axis: {nearest}")


def _count(batch: Mapping[str, Any] | int) -> int:
    if isinstance(batch, int):
        return batch
    return len(next(iter(batch.values())))


def draw(
    model: Any,
    batch: Mapping[str, Any] | int,
    captions: list[str] | None = None,
    *,
    latent_size: Sequence[int] | None = None,
    negative_prompt: str | None = None,
    init_image: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    strength: float | None = None,
    data_spec: Any = None,
    **options: Any,
) -> Samples:
    """Sample ``batch`` (from :func:`conditioning_batch`) with ``model``.

    ``options`` are sampling options of ``model.sample`` (``sampler``, ``steps``,
    ``guidance_scale``, ``seed``, ...; for a model whose ``sample`` takes fewer, the ones it
    takes). ``negative_prompt`` replaces the empty prompt of guidance. With ``init_image``
    (C, *spatial), img2img from it (``strength`` default 0.75), and with ``mask``
    (1, *spatial, white = generate) inpainting (``strength`` default 1). The value range
    and layout are the autoencoder's ``data_spec`` (for a model without one: ``data_spec``,
    e.g. the dataset's, else the range [-1, 1] and no layout)."""
    import inspect

    if latent_size is not None and init_image is None:  # otherwise the image decides the size
        options["latent_size"] = tuple(latent_size)
    if negative_prompt is not None:
        if not isinstance(batch, Mapping) or "caption" not in batch:
            raise ValueError("a negative prompt needs prompts")
        options["negative"] = {"caption": [negative_prompt] * len(batch["caption"])}
    if mask is not None and init_image is None:
        raise ValueError("a mask needs an initial image (the image to inpaint)")
    spec = getattr(getattr(model, "autoencoder", None), "data_spec", None) or data_spec
    value_range = (float(spec.value_range[0]), float(spec.value_range[1])) if spec is not None else (-1.0, 1.0)
    with torch.no_grad():
        if init_image is None:
            params = inspect.signature(model.sample).parameters
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                options = {k: v for k, v in options.items() if k in params}
            images = model.sample(batch, **options)
        else:
            model.autoencoder.latent_spec.latent_size(tuple(init_image.shape[1:]))  # clear error if indivisible
            n = _count(batch)
            images_in = init_image.unsqueeze(0).expand(n, *init_image.shape).contiguous()
            cond = batch if isinstance(batch, Mapping) else None
            if mask is not None:
                masks = (mask > 0.5).float().unsqueeze(0).expand(n, *mask.shape).contiguous()
                images = model.inpaint(images_in, masks, batch=cond, strength=1.0 if strength is None else strength,
                                       **options)
            else:
                images = model.img2img(images_in, 0.75 if strength is None else strength, batch=cond, **options)
    layout = str(spec.layout) if spec is not None else None
    return Samples(images.float().cpu().clamp(*value_range), captions, value_range, layout)


@torch.no_grad()
def reconstructions(autoencoder: Any, items: Sequence[Mapping[str, Any]], data_key: str,
                    device: torch.device | str = "cpu") -> Samples:
    """``items`` next to their reconstructions through ``autoencoder`` (input, reconstruction,
    input, ...), captioned, for the sample grids of autoencoder training."""
    x = default_collate([it[data_key] for it in items]).to(device)
    out = autoencoder.reconstruct(x)
    rec = getattr(out, "reconstruction", out)
    pairs = torch.stack([x, rec.to(x.dtype)], dim=1).flatten(0, 1)
    base = _item_captions(items) or [f"item {i}" for i in range(len(items))]
    captions = [c for b in base for c in (f"{b} (input)", f"{b} (reconstruction)")]
    spec = autoencoder.data_spec
    value_range = (float(spec.value_range[0]), float(spec.value_range[1]))
    return Samples(pairs.float().cpu().clamp(*value_range), captions, value_range, str(spec.layout))


def read_image(path: str, channels: int, size: Sequence[int] | None, value_range: Sequence[float]) -> torch.Tensor:
    """An image file as a (C, H, W) float tensor in ``value_range``, resized to ``size``
    (H [W]); a ``ValueError`` naming the file when it cannot be read."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size:
                h, w = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {path!r}: {exc}") from None
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    lo, hi = float(value_range[0]), float(value_range[1])
    return tensor * (hi - lo) + lo
