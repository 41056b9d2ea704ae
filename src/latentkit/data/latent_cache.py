"""Latent caching: encode a dataset once through the frozen autoencoder and train the
diffusion model from the stored latents.

On small models the first stage's encoder costs more than the denoiser's training step, and
it is frozen anyway (Rombach et al. 2022 train the second stage on a fixed first stage), so
its outputs can be computed once. :func:`cache_latents` stores the **raw** latents (before
the autoencoder's normalisation, which :class:`~latentkit.LatentDiffusion` applies to a
batch's ``latents``) of every item, and of its horizontal flip, in one safetensors file.
:class:`LatentCacheDataset` serves them under the batch key ``latents``, with a random
variant (original or flipped) per item and epoch, plus the items' captions and labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from latentkit.data.base import AugmentedDataset
from latentkit.random import generators_from_seed
from latentkit.specs import DataSpec

__all__ = ["CACHE_FORMAT", "LatentCacheDataset", "cache_fingerprint", "cache_latents"]

CACHE_FORMAT = "latentkit-latent-cache/1"


def _weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def cache_fingerprint(dataset: Any, autoencoder: torch.nn.Module, *, flip: bool, sample: bool, seed: int) -> str:
    """A digest of what determines the cache: the dataset's options (``describe()`` or its
    class and length), the autoencoder's weights and the caching options."""
    describe = getattr(dataset, "describe", None)
    ds = describe() if callable(describe) else {"class": type(dataset).__name__, "len": len(dataset)}
    payload = json.dumps({"dataset": ds, "autoencoder": type(autoencoder).__name__,
                          "weights": _weights_digest(autoencoder), "flip": flip, "sample": sample,
                          "seed": seed, "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@contextlib.contextmanager
def _augmentation_off(dataset: Any) -> Iterator[None]:
    """Encode the un-augmented items: datasets' random ``flip`` is turned off meanwhile (the
    cache stores the flipped variant itself) and the epoch fixed at 0."""
    old_flip = getattr(dataset, "flip", None)
    if isinstance(old_flip, bool):
        dataset.flip = False
    set_epoch = getattr(dataset, "set_epoch", None)
    old_epoch = getattr(dataset, "epoch", None)
    if callable(set_epoch):
        set_epoch(0)
    try:
        yield
    finally:
        if isinstance(old_flip, bool):
            dataset.flip = old_flip
        if callable(set_epoch) and isinstance(old_epoch, int):
            set_epoch(old_epoch)


@torch.no_grad()
def cache_latents(
    dataset: Any,
    autoencoder: Any,
    path: str | os.PathLike[str],
    *,
    flip: bool = True,  # also store the latents of horizontally flipped items
    batch_size: int = 16,
    device: str | torch.device | None = None,  # default: the autoencoder's device
    sample: bool = False,  # posterior sample (seeded) instead of the mode
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Encode every item of ``dataset`` once and store the raw latents at ``path``.

    The file holds ``latents`` (N, V, C, *latent_spatial) with V = 2 when ``flip`` (original,
    flipped along the last axis) else 1, integer and float item fields as tensors (``label``)
    and string fields (``caption``) as JSON in the metadata. An existing cache whose
    fingerprint (:func:`cache_fingerprint`) matches is reused without encoding anything.
    Written atomically. Returns ``path``.
    """
    from latentkit.fileio import atomic_write_bytes

    path = Path(path)
    fingerprint = cache_fingerprint(dataset, autoencoder, flip=flip, sample=sample, seed=seed)
    if path.exists() and not overwrite:
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") == fingerprint:
                    return path
        except Exception:  # unreadable: re-encode
            pass
    key = getattr(dataset, "data_key", "image")
    if device is None:
        device = next((p.device for p in autoencoder.parameters()), None) or next(
            (b.device for b in autoencoder.buffers()), torch.device("cpu"))
    was_training = autoencoder.training
    autoencoder.eval()
    n = len(dataset)
    chunks: list[torch.Tensor] = []
    fields: dict[str, list[Any]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="caching latents", unit="item")
    try:
        with _augmentation_off(dataset):
            for start in range(0, n, batch_size):
                items = [dataset[i] for i in range(start, min(n, start + batch_size))]
                x = torch.stack([it[key] for it in items]).to(device)
                variants = [x, x.flip(-1)] if flip else [x]
                encoded = []
                for v, xv in enumerate(variants):
                    dist = autoencoder.encode(xv)
                    if sample:
                        gens = generators_from_seed(seed * 1_000_003 + 2 * start + v, len(items), device)
                        z = dist.sample(gens)
                    else:
                        z = dist.mode()
                    encoded.append(z.float().cpu())
                chunks.append(torch.stack(encoded, dim=1))  # (b, V, C, *s)
                for it in items:
                    for k, value in it.items():
                        if k != key:
                            fields.setdefault(k, []).append(value)
                if bar is not None:
                    bar.update(len(items))
    finally:
        autoencoder.train(was_training)
        if bar is not None:
            bar.close()
    latents = torch.cat(chunks).contiguous()
    tensors: dict[str, torch.Tensor] = {"latents": latents}
    strings: dict[str, list[str]] = {}
    for k, values in fields.items():
        if len(values) != n:
            continue  # not present in every item
        if all(isinstance(v, str) for v in values):
            strings[k] = list(values)
        elif all(isinstance(v, bool) or isinstance(v, int) for v in values):
            tensors[f"field.{k}"] = torch.tensor(values, dtype=torch.int64)
        elif all(isinstance(v, (int, float)) for v in values):
            tensors[f"field.{k}"] = torch.tensor(values, dtype=torch.float32)
    layout = getattr(getattr(autoencoder, "latent_spec", None), "layout", None) or "CHW"
    metadata = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "layout": layout,
        "variants": json.dumps(["original", "flip"] if flip else ["original"]),
        "strings": json.dumps(strings),
    }
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))
    return path


class LatentCacheDataset(AugmentedDataset):
    """The items of a latent cache: ``latents`` (C, *latent_spatial, raw), the stored fields
    (``caption``, ``label``, ...), and ``variant`` (0 = original, 1 = flipped).

    ``variant="random"`` picks original or flipped per item and epoch (depending on
    ``(seed, epoch, index)`` only); ``"original"`` always serves the un-flipped latents.
    """

    data_key = "latents"

    def __init__(self, path: str | os.PathLike[str], seed: int = 0, variant: str = "random") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"latent cache {str(self.path)!r} does not exist; create it with cache_latents")
        if variant not in ("random", "original"):
            raise ValueError(f"latent_cache: variant must be 'random' or 'original', got {variant!r}")
        with safetensors.safe_open(str(self.path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path} is not a latentkit latent cache (format {metadata.get('format')!r})")
        tensors = safetensors.torch.load_file(str(self.path))
        self.latents = tensors["latents"]  # (N, V, C, *s)
        self.fields = {k.removeprefix("field."): v for k, v in tensors.items() if k.startswith("field.")}
        self.strings: dict[str, list[str]] = json.loads(metadata.get("strings", "{}"))
        self.variants: list[str] = json.loads(metadata.get("variants", '["original"]'))
        self.variant = variant
        super().__init__(DataSpec(channels=int(self.latents.shape[2]), layout=metadata.get("layout", "CHW")),
                         seed=seed)

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        v = 0
        if self.variant == "random" and self.latents.shape[1] > 1:
            v = int(self.rng(index).integers(0, self.latents.shape[1]))
        item: dict[str, Any] = {"latents": self.latents[index, v].clone(), "variant": v}
        for k, t in self.fields.items():
            item[k] = t[index].item()
        for k, values in self.strings.items():
            item[k] = values[index]
        return item
