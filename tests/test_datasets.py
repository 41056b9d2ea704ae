"""Built-in datasets (shapes, digits, photo crops, image folder) and latent caching."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import latentkit.data
from latentkit.data.digits import DigitsDataset
from latentkit.data.image_folder import ImageFolderDataset
from latentkit.data.latent_cache import LatentCacheDataset, cache_latents
from latentkit.data.photo_crops import PhotoCropsDataset
from latentkit.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    caption_of,
    describe_image,
)
from latentkit.interfaces import Autoencoder, Dataset, DiracDistribution
from latentkit.plugins import PluginManager
from latentkit.specs import DataSpec, LatentSpec


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = PluginManager(autoload=False)
    manager.load()
    if not manager.pm.is_registered(latentkit.data):
        manager.register(latentkit.data, "latentkit.data")
    return manager


def test_registered_through_the_hook(pm: PluginManager) -> None:
    names = {c.name for c in pm.list("dataset")}
    assert {"image_folder", "shapes", "digits", "photo_crops", "latent_cache"} <= names
    for info in pm.list("dataset"):
        if info.tiny_config:
            ds = pm.create("dataset", info.name, **info.tiny_config)
            assert isinstance(ds, Dataset) and len(ds) > 0
            item = ds[0]
            assert item[ds.data_key].shape[0] == ds.data_spec.channels


# ----------------------------------------------------------------------- shapes


def test_shapes_items_are_deterministic_and_captioned() -> None:
    a, b, c = ShapesDataset(size=32, length=48, seed=3), ShapesDataset(size=32, length=48, seed=3), ShapesDataset(size=32, length=48, seed=4)
    item = a[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert torch.equal(item["image"], b[5]["image"]) and item["caption"] == b[5]["caption"]
    assert not torch.equal(item["image"], c[5]["image"])
    a.set_epoch(7)
    assert torch.equal(a[5]["image"], b[5]["image"])  # items never change with the epoch
    pattern = re.compile(rf"a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) at the ({'|'.join(POSITIONS)})")
    for i in range(len(a)):
        it = a[i]
        m = pattern.fullmatch(it["caption"])
        assert m is not None and m.groups() == (it["color"], it["shape"], it["position"])
        assert it["label"] == list(COLORS).index(it["color"]) * len(SHAPES) + SHAPES.index(it["shape"])
    # every combination equally often over a multiple of the 48 combinations
    counts = Counter(a[i]["caption"] for i in range(48))
    assert len(counts) == 48 and set(counts.values()) == {1}


def test_shapes_checker_recovers_every_attribute() -> None:
    ds = ShapesDataset(size=32, length=96, seed=1)
    for i in range(len(ds)):
        it = ds[i]
        seen = describe_image(it["image"])
        assert (seen.color, seen.shape, seen.position) == (it["color"], it["shape"], it["position"]), i
        assert seen.matches(it["caption"])
    blank = torch.zeros(3, 32, 32)  # grey: no shape at all
    assert describe_image(blank).color is None and not describe_image(blank).matches("a red circle")


def test_shapes_checker_reads_a_drawn_shape_not_the_caption() -> None:
    ds = ShapesDataset(size=32, length=4, colors=["blue"], shapes=["triangle"], positions=["bottom right"])
    seen = describe_image(ds[0]["image"])
    assert (seen.color, seen.shape, seen.position) == ("blue", "triangle", "bottom right")
    assert not seen.matches("a red triangle at the bottom right") and not seen.matches("a blue circle")


def test_shapes_partial_captions_leave_one_attribute_out() -> None:
    full = ShapesDataset(size=16, length=96, seed=2)
    part = ShapesDataset(size=16, length=96, seed=2, partial_captions=0.5)
    forms = {"position": 0, "color": 0, "shape": 0, "full": 0}
    for i in range(96):
        a, b = full[i], part[i]
        assert torch.equal(a["image"], b["image"]) and a["caption"] == caption_of(a["color"], a["shape"], a["position"])
        words = b["caption"]
        if words == a["caption"]:
            forms["full"] += 1
        elif words == f"a {a['color']} {a['shape']}":
            forms["position"] += 1
        elif words == f"a {a['shape']} at the {a['position']}":
            forms["color"] += 1
        else:
            assert words == f"a {a['color']} shape at the {a['position']}", words
            forms["shape"] += 1
    assert all(n > 0 for n in forms.values()) and 24 <= forms["full"] <= 72, forms
    assert part[5]["caption"] == ShapesDataset(size=16, length=96, seed=2, partial_captions=0.5)[5]["caption"]
    with pytest.raises(ValueError, match="partial_captions"):
        ShapesDataset(partial_captions=1.5)


def test_shapes_exclude_and_option_errors() -> None:
    held_out = caption_of("red", "circle", "top left")
    ds = ShapesDataset(size=16, length=200, exclude=[held_out])
    assert held_out not in {ds[i]["caption"] for i in range(len(ds))} and held_out not in ds.captions
    with pytest.raises(ValueError, match="never occur"):
        ShapesDataset(exclude=["a purple star at the top"])
    with pytest.raises(ValueError, match="colors must be a non-empty subset"):
        ShapesDataset(colors=["mauve"])
    with pytest.raises(IndexError):
        ds[200]


# ----------------------------------------------------------------------- digits


def test_digits_upscaled_with_labels_and_disjoint_splits() -> None:
    train, test = DigitsDataset(size=32), DigitsDataset(size=32, split="test")
    assert (len(train), len(test)) == (1437, 360)
    item = train[0]
    assert item["image"].shape == (1, 32, 32) and 0 <= item["label"] <= 9
    assert item["caption"] == f"a handwritten digit {item['label']}"
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Area-downsampling back to 8x8 finds the source image it was upscaled from.
    small = F.avg_pool2d(item["image"][None], 4)[0, 0].numpy().ravel()
    src = digits.images.reshape(len(digits.images), -1)
    corr = [np.corrcoef(small, s)[0, 1] if s.std() > 0 else -1 for s in src]
    best = int(np.argmax(corr))
    assert corr[best] > 0.9 and digits.target[best] == item["label"]
    train_set = {train.images[i].numpy().tobytes() for i in range(len(train))}
    assert not any(test.images[i].numpy().tobytes() in train_set for i in range(len(test)))
    assert DigitsDataset(size=16, channels=3)[0]["image"].shape == (3, 16, 16)


# ----------------------------------------------------------------------- photo crops


def test_photo_crops_are_seeded_per_epoch_and_split() -> None:
    ds = PhotoCropsDataset(size=32, length=16, photos=["astronaut", "coffee"])
    a = ds[3]["image"]
    assert a.shape == (3, 32, 32) and torch.equal(a, ds[3]["image"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[3]["image"])  # new crops each epoch
    ds.set_epoch(0)
    assert torch.equal(a, ds[3]["image"])  # ...and the same ones again for that epoch
    fixed = PhotoCropsDataset(size=32, length=4, photos=["astronaut"], fixed=True)
    first = fixed[0]["image"]
    fixed.set_epoch(5)
    assert torch.equal(first, fixed[0]["image"])
    train = PhotoCropsDataset(size=32, photos=["astronaut"], split="train")
    test = PhotoCropsDataset(size=32, photos=["astronaut"], split="test")
    assert train.photos[0].shape[1] + test.photos[0].shape[1] == 512  # disjoint column ranges
    assert np.array_equal(np.concatenate([train.photos[0], test.photos[0]], axis=1),
                          np.asarray(__import__("skimage.data", fromlist=["astronaut"]).astronaut()))


# ----------------------------------------------------------------------- image folder


def _write_image(path: Path, size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> None:
    from PIL import Image

    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = left
    a[:, w // 2 :] = right
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_image_folder_sidecar_captions_resize_center_crop(tmp_path: Path) -> None:
    _write_image(tmp_path / "b.png", (40, 20), (255, 0, 0), (0, 0, 255))  # wide: 32x16 after resize
    _write_image(tmp_path / "a.jpg", (16, 16), (0, 255, 0), (0, 255, 0))
    (tmp_path / "b.txt").write_text("red and blue\n")
    (tmp_path / "a.txt").write_text("green")
    ds = ImageFolderDataset(str(tmp_path), size=16)
    assert [str(f) for f in ds.files] == ["a.jpg", "b.png"]
    item = ds[1]
    assert item["image"].shape == (3, 16, 16) and item["caption"] == "red and blue"
    img = (item["image"] + 1) / 2
    assert img[0, :, :6].mean() > 0.9 and img[2, :, -6:].mean() > 0.9  # centre crop keeps both halves
    assert ds[0]["caption"] == "green"


def test_image_folder_jsonl_labels_flip(tmp_path: Path) -> None:
    _write_image(tmp_path / "cats" / "x.png", (24, 24), (255, 0, 0), (0, 0, 255))
    _write_image(tmp_path / "dogs" / "y.png", (24, 24), (0, 0, 255), (255, 0, 0))
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file_name": "cats/x.png", "text": "a cat"}) + "\n" + json.dumps({"file": "dogs/y.png", "caption": "a dog"}) + "\n")
    ds = ImageFolderDataset(str(tmp_path), size=16, labels=True, flip=True, crop="random")
    assert ds.classes == ["cats", "dogs"] and ds[1]["label"] == 1 and ds[0]["caption"] == "a cat"
    red_left = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        first = ds[0]["image"]
        assert torch.equal(first, ds[0]["image"])  # same epoch, same augmentation
        red_left.append(bool(first[0, :, :4].mean() > 0.5))
    assert len(set(red_left)) == 2  # flipped in some epochs, not in others


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolderDataset(str(tmp_path / "missing"))
    _write_image(tmp_path / "a.png", (8, 8), (0, 0, 0), (0, 0, 0))
    _write_image(tmp_path / "b.png", (8, 8), (0, 0, 0), (0, 0, 0))
    (tmp_path / "a.txt").write_text("only one caption")
    with pytest.raises(ValueError, match="some images have a sidecar"):
        ImageFolderDataset(str(tmp_path), size=8)
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"captions\.jsonl:2: expected a JSON object"):
        ImageFolderDataset(str(tmp_path), size=8)
    assert "caption" not in ImageFolderDataset(str(tmp_path), size=8, captions="none")[0]


# ----------------------------------------------------------------------- latent cache


class PoolAutoencoder(Autoencoder):
    """f=2 "autoencoder": average pooling, so latents differ from the flipped image's."""

    def __init__(self) -> None:
        super().__init__(DataSpec(channels=3), LatentSpec(channels=3, downsampling=2, scaling_factor=0.5))
        self.calls = 0
        self.weight = torch.nn.Parameter(torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> DiracDistribution:
        self.calls += 1
        return DiracDistribution(F.avg_pool2d(self.check_data(x), 2) * self.weight)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.check_latent(z), scale_factor=2.0)


def test_latent_cache_round_trip_with_flips(tmp_path: Path, pm: PluginManager) -> None:
    ds = ShapesDataset(size=16, length=10)
    ae = PoolAutoencoder()
    path = cache_latents(ds, ae, tmp_path / "cache.safetensors", batch_size=4)
    cached = pm.create("dataset", "latent_cache", path=str(path), variant="original")
    assert isinstance(cached, LatentCacheDataset) and len(cached) == 10 and cached.data_key == "latents"
    for i in range(10):
        x = ds[i]["image"][None]
        with torch.no_grad():
            assert torch.allclose(cached.latents[i, 0], ae.encode(x).mode()[0])
            assert torch.allclose(cached.latents[i, 1], ae.encode(x.flip(-1)).mode()[0])
        item = cached[i]
        assert item["caption"] == ds[i]["caption"] and item["label"] == ds[i]["label"] and item["color"] == ds[i]["color"]
        assert torch.equal(item["latents"], cached.latents[i, 0])
    # random variants: both appear over epochs, deterministic per (seed, epoch, index)
    rnd = LatentCacheDataset(path)
    variants = []
    for epoch in range(6):
        rnd.set_epoch(epoch)
        variants.append([rnd[i]["variant"] for i in range(10)])
        assert variants[-1] == [rnd[i]["variant"] for i in range(10)]
    assert {v for vs in variants for v in vs} == {0, 1}
    # reused when nothing changed; re-encoded when the weights change
    calls = ae.calls
    cache_latents(ds, ae, path, batch_size=4)
    assert ae.calls == calls
    with torch.no_grad():
        ae.weight.fill_(2.0)
    cache_latents(ds, ae, path, batch_size=4)
    assert ae.calls > calls and torch.allclose(LatentCacheDataset(path).latents[0, 0], 2 * cached.latents[0, 0])


def test_diffusion_trains_from_cached_latents(tmp_path: Path, pm: PluginManager) -> None:
    """LatentDiffusion's loss on cached raw latents equals its loss on the images."""
    from latentkit.diffusion import LatentDiffusion
    from latentkit.training import Trainer, TrainingConfig

    torch.manual_seed(0)
    ae = pm.create("autoencoder", "identity", channels=3, scaling_factor=0.7)
    den = pm.create("denoiser", "unet", **{**pm.get("denoiser", "unet").tiny_config, "in_channels": 3, "out_channels": 3})
    model = LatentDiffusion(ae, den, None, pm.create("schedule", "scaled_linear", num_train_timesteps=100))
    ds = ShapesDataset(size=16, length=8)
    cached = LatentCacheDataset(cache_latents(ds, ae, tmp_path / "c.safetensors"), variant="original")
    images = torch.stack([ds[i]["image"] for i in range(4)])
    latents = torch.stack([cached[i]["latents"] for i in range(4)])
    loss_images = model.loss({"image": images}, generator=torch.Generator().manual_seed(1))
    loss_cached = model.loss({"latents": latents}, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss_images, loss_cached)
    cfg = TrainingConfig(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=4, progress=False)
    metrics: dict[str, Any] = Trainer(model, LatentCacheDataset(tmp_path / "c.safetensors"), cfg, plugin_manager=pm).fit()
    assert np.isfinite(metrics["loss"])


def test_config_cache_latents_builds_a_cache(tmp_path: Path, pm: PluginManager) -> None:
    from latentkit.experiment import build_dataset, build_model, loads_config

    text = f"""
[autoencoder]
name = "identity"
[denoiser]
name = "unet"
model_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [2]
num_heads = 2
norm_groups = 4
[schedule]
name = "scaled_linear"
[data]
name = "shapes"
size = 16
length = 6
cache_latents = true
[training]
output_dir = {json.dumps(str(tmp_path))}
"""
    cfg = loads_config(text, manager=pm)
    dataset = build_dataset(cfg, build_model(cfg, manager=pm), manager=pm)
    assert isinstance(dataset, LatentCacheDataset) and len(dataset) == 6
    assert (tmp_path / "latent_cache" / "shapes.safetensors").exists()


def test_item_rng_is_a_pure_function_of_seed_and_keys() -> None:
    """latentkit.random.item_rng (the per-item stream plugins use) is numpy's SeedSequence of
    [seed mod 2**32, *keys]: the same numbers in every process, independent across keys, and
    the stream the built-in datasets always drew (so their items did not change)."""
    from latentkit.data.base import item_rng as data_item_rng
    from latentkit.random import item_rng

    draw = item_rng(7, 3).random(4)
    np.testing.assert_array_equal(draw, np.random.default_rng([7, 3]).random(4))
    np.testing.assert_array_equal(item_rng(2**32 + 7, 3).random(4), draw)  # 32-bit seed
    np.testing.assert_array_equal(data_item_rng(5, 1, 9).random(3), np.random.default_rng([5, 1, 9]).random(3))
    assert not np.array_equal(item_rng(7, 4).random(4), draw)
    assert not np.array_equal(item_rng(7, 0, 3).random(4), draw)  # a key more is another stream
    with pytest.raises(ValueError, match="at least one key"):
        item_rng(7)
    with pytest.raises(ValueError, match="non-negative"):
        item_rng(7, -1)
