"""``image_folder``: images from a directory tree, with optional captions.

Captions come from a ``captions.jsonl`` at the root (one JSON object per line with the image
path relative to the root under ``file`` / ``file_name`` and the caption under ``caption`` /
``text``, the layout of Hugging Face's imagefolder metadata), or else from a sidecar
``<image>.txt`` next to each image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentkit.data.base import AugmentedDataset, image_to_tensor
from latentkit.specs import DataSpec

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_FILE_KEYS = ("file", "file_name", "image", "path")
_CAPTION_KEYS = ("caption", "text", "prompt")


class ImageFolderDataset(AugmentedDataset):
    """Every image under ``root`` (recursively, sorted by path), resized so the shorter side
    is ``size``, cropped to ``size`` x ``size`` (centre or random) and optionally flipped.

    Items: ``image`` (channels, size, size) in [-1, 1], ``path`` (relative to root), and
    ``caption`` when captions are found (``captions="auto"``: ``captions.jsonl`` if present,
    else sidecar ``.txt`` files; ``"jsonl"`` / ``"txt"`` require that source; ``"none"`` skips
    them). ``labels=True`` adds ``label``: the index of the image's first-level subdirectory
    in sorted order (as torchvision's ``ImageFolder``). Random crops and flips depend on
    ``(seed, epoch, index)`` only.
    """

    def __init__(
        self,
        root: str,  # directory with the images
        size: int = 256,  # output side in pixels
        crop: str = "center",  # "center" or "random"
        flip: bool = False,  # random horizontal flips
        captions: str = "auto",  # "auto", "jsonl", "txt" or "none"
        labels: bool = False,  # label = index of the first-level subdirectory
        channels: int = 3,  # 3 (RGB) or 1 (grey)
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        seed: int = 0,
    ) -> None:
        super().__init__(DataSpec(channels=channels, layout="CHW"), seed=seed)
        if crop not in ("center", "random"):
            raise ValueError(f"image_folder: crop must be 'center' or 'random', got {crop!r}")
        if captions not in ("auto", "jsonl", "txt", "none"):
            raise ValueError(f"image_folder: captions must be 'auto', 'jsonl', 'txt' or 'none', got {captions!r}")
        if channels not in (1, 3):
            raise ValueError(f"image_folder: channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image_folder: root {str(self.root)!r} is not a directory")
        exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
        self.files = sorted(p.relative_to(self.root) for p in self.root.rglob("*")
                            if p.is_file() and p.suffix.lower() in exts)
        if not self.files:
            raise ValueError(f"image_folder: no images with extensions {sorted(exts)} under {str(self.root)!r}")
        self.size, self.crop, self.flip, self.channels = int(size), crop, bool(flip), int(channels)
        self.captions_mode = captions
        self.captions = self._read_captions(captions)
        self.classes: list[str] = []
        if labels:
            self.classes = sorted({f.parts[0] for f in self.files if len(f.parts) > 1})
            loose = [str(f) for f in self.files if len(f.parts) == 1]
            if loose:
                raise ValueError(f"image_folder: labels=True needs every image in a class subdirectory; "
                                 f"found {loose[:3]} at the root")
        self.with_labels = bool(labels)

    def _read_captions(self, mode: str) -> dict[Path, str] | None:
        jsonl = self.root / "captions.jsonl"
        if mode == "none":
            return None
        if mode in ("auto", "jsonl") and jsonl.exists():
            out: dict[Path, str] = {}
            for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    file = next(record[k] for k in _FILE_KEYS if k in record)
                    caption = next(record[k] for k in _CAPTION_KEYS if k in record)
                except (ValueError, StopIteration, TypeError) as exc:
                    raise ValueError(
                        f"{jsonl}:{n}: expected a JSON object with one of {_FILE_KEYS} and one of "
                        f"{_CAPTION_KEYS}, got {line[:80]!r}") from exc
                out[Path(file)] = str(caption)
            missing = [str(f) for f in self.files if f not in out]
            if missing:
                raise ValueError(f"{jsonl}: no caption for {len(missing)} image(s), e.g. {missing[:3]}")
            return out
        if mode == "jsonl":
            raise FileNotFoundError(f"image_folder: captions='jsonl' but {jsonl} does not exist")
        sidecars = {f: (self.root / f).with_suffix(".txt") for f in self.files}
        found = {f: p for f, p in sidecars.items() if p.exists()}
        if mode == "txt" and len(found) < len(self.files):
            missing = [str(f) for f in self.files if f not in found]
            raise FileNotFoundError(f"image_folder: captions='txt' but {len(missing)} image(s) have no "
                                    f"sidecar .txt, e.g. {missing[:3]}")
        if not found:
            return None
        if len(found) < len(self.files):
            missing = [str(f) for f in self.files if f not in found]
            raise ValueError(f"image_folder: some images have a sidecar .txt caption and some do not, "
                             f"e.g. {missing[:3]}; add them or pass captions='none'")
        return {f: p.read_text(encoding="utf-8").strip() for f, p in found.items()}

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Image ``index`` as an (size, size, C) uint8 array, cropped and (maybe) flipped."""
        from PIL import Image

        with Image.open(self.root / self.files[index]) as im:
            im = im.convert("RGB" if self.channels == 3 else "L")
            w, h = im.size
            scale = self.size / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            im = im.resize((nw, nh), getattr(Image, "Resampling", Image).BICUBIC, reducing_gap=3.0)
            if self.crop == "random" and rng is not None:
                x = int(rng.integers(0, nw - self.size + 1))
                y = int(rng.integers(0, nh - self.size + 1))
            else:
                x, y = (nw - self.size) // 2, (nh - self.size) // 2
            a = np.asarray(im.crop((x, y, x + self.size, y + self.size)))
        if self.flip and rng is not None and rng.random() < 0.5:
            a = a[:, ::-1]
        return a

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        rng = self.rng(index)
        item: dict[str, Any] = {"image": image_to_tensor(self.load(index, rng)), "path": str(self.files[index])}
        if self.captions is not None:
            item["caption"] = self.captions[self.files[index]]
        if self.with_labels:
            item["label"] = self.classes.index(self.files[index].parts[0])
        return item

    def describe(self) -> dict[str, Any]:
        """Options that determine the items."""
        return {"class": "ImageFolderDataset", "root": str(self.root.resolve()), "size": self.size,
                "crop": self.crop, "flip": self.flip, "captions": self.captions_mode,
                "labels": self.with_labels, "channels": self.channels, "seed": self.seed,
                "files": len(self.files)}
