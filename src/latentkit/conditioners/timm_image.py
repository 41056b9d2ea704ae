"""Image conditioning through any timm model, for image variations and image prompts.

Stable Diffusion image variations and unCLIP condition on an image encoder's pooled embedding
(Ramesh et al. 2022); IP-Adapter-style models attend to its token features (Ye et al. 2023).
:class:`TimmImageConditioner` offers both: the pooled pre-logits features as ``vector`` and the
final feature map / token sequence as ``crossattn``, each optionally projected to a chosen
width by a learned linear layer. The encoder is any ``timm.create_model`` name, randomly
initialised or loaded from a local weights file through timm's own loader (safetensors or
``torch.load(weights_only=True)``, with the model's checkpoint filter applied).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentkit.conditioners.base import BaseConditioner, load_weights_file, parse_outputs
from latentkit.errors import ShapeError
from latentkit.interfaces import check_tensor
from latentkit.specs import Conditioning, ConditioningSpec

__all__ = ["TimmImageConditioner"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return size[-2:]  # type: ignore[return-value]  # (C, H, W) input_size -> (H, W)


class TimmImageConditioner(BaseConditioner):
    """``image`` (B, C, H, W) in ``value_range`` -> timm image features.

    Images are mapped to [0, 1], resized to ``image_size`` (bilinear, antialiased) and
    normalised with the model's mean / std. ``vector`` (B, D) is the pooled pre-logits feature
    (``forward_head(pre_logits=True)``); ``crossattn`` (B, L, D) the output of
    ``forward_features`` as tokens (a (B, C, H, W) feature map becomes H*W tokens). Each is
    projected to ``vector_dim`` / ``crossattn_dim`` by a learned linear layer when given.

    The null input is a zero embedding: zeros of the output shapes (as Stable Diffusion image
    variations use ``zeros_like`` of the image embedding for the unconditional branch).
    """

    encoder: Any  # the timm model
    mean: torch.Tensor
    std: torch.Tensor
    token_proj: nn.Module
    vector_proj: nn.Module

    def __init__(
        self,
        model_name: str,  # any timm.list_models() name
        *,
        weights: str | os.PathLike[str] | None = None,  # local weights file (timm loader)
        model_kwargs: Mapping[str, Any] | None = None,  # extra timm.create_model kwargs
        outputs: str | Iterable[str] = "vector",  # "vector", "crossattn" or both
        crossattn_dim: int | None = None,  # project tokens to this width (None: native width)
        vector_dim: int | None = None,  # project the pooled feature to this width (None: native)
        image_size: int | Sequence[int] | None = None,  # encoder input size (None: model's)
        value_range: tuple[float, float] = (-1.0, 1.0),  # range of the batch images
        key: str = "image",  # batch key of the images
        dropout: float = 0.0,  # probability of the null (zero) embedding in training (CFG)
        trainable: bool = False,  # fine-tune the encoder (projections always train)
    ) -> None:
        import timm

        kwargs = dict(model_kwargs or {})
        kwargs.setdefault("num_classes", 0)  # pooled pre-logits features, no classifier
        if weights is not None:
            path = os.fspath(weights)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"TimmImageConditioner: weights file {path!r} does not exist")
            load_weights_file(path)  # refuses a pickle that names code (and a corrupt file) before timm reads it
            kwargs["pretrained_cfg_overlay"] = {"file": path}
        encoder: Any
        try:
            encoder = timm.create_model(model_name, pretrained=weights is not None, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"TimmImageConditioner: {exc}") from exc
            raise
        outs = parse_outputs(outputs, ("crossattn", "vector"), "TimmImageConditioner")
        cfg = getattr(encoder, "pretrained_cfg", None) or {}
        if image_size is None:
            image_size = kwargs.get("img_size", cfg.get("input_size", (3, 224, 224)))
        self_image_size = _pair(image_size)
        in_chans = int(kwargs.get("in_chans", cfg.get("input_size", (3,))[0]))
        mean = torch.tensor(cfg.get("mean", (0.5,) * in_chans), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.5,) * in_chans), dtype=torch.float32)
        if mean.numel() != in_chans:  # e.g. a 3-channel mean for in_chans=1
            mean, std = mean.mean().repeat(in_chans), std.mean().repeat(in_chans)

        # The output widths (and token count) are found once with a probe image, so that the
        # spec is exact for every model family (heads with a hidden layer, NHWC outputs, ...).
        encoder.eval()
        with torch.no_grad():
            probe = torch.zeros(1, in_chans, *self_image_size)
            feats = encoder.forward_features(probe)
            tokens = self._to_tokens(encoder, feats)
            pooled = encoder.forward_head(feats, pre_logits=True)
        native_tokens, native_vector = int(tokens.shape[-1]), int(pooled.shape[-1])
        super().__init__(
            output_spec=ConditioningSpec(
                crossattn_dim=(crossattn_dim or native_tokens) if "crossattn" in outs else None,
                vector_dim=(vector_dim or native_vector) if "vector" in outs else None,
            ),
            input_keys=(key,),
            dropout=dropout,
            trainable=trainable,
        )
        self.encoder = encoder
        self.model_name = model_name
        self.outputs = outs
        self.key = key
        self.image_size = self_image_size
        self.in_chans = in_chans
        self.num_tokens = int(tokens.shape[1])
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        self.token_proj = (
            nn.Linear(native_tokens, crossattn_dim)
            if "crossattn" in outs and crossattn_dim is not None
            else nn.Identity()
        )
        self.vector_proj = (
            nn.Linear(native_vector, vector_dim)
            if "vector" in outs and vector_dim is not None
            else nn.Identity()
        )
        self.set_trainable(trainable)

    @staticmethod
    def _to_tokens(encoder: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim == 3:  # (B, N, D) transformer tokens
            return feats
        if feats.ndim == 4:
            if getattr(encoder, "output_fmt", "NCHW") == "NHWC":  # (B, H, W, C), e.g. Swin
                return feats.flatten(1, 2)
            return feats.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        raise ShapeError(
            f"TimmImageConditioner: forward_features returned shape {tuple(feats.shape)}; "
            "expected (B, N, D) tokens or a (B, C, H, W) feature map"
        )

    def frozen_modules(self) -> list[nn.Module]:
        """Only the timm encoder is frozen; the projections are new weights and always train."""
        return [self.encoder]

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Images in ``value_range`` -> the encoder's normalised input at ``image_size``."""
        lo, hi = self.value_range
        x = (image.to(self.mean.dtype) - lo) / (hi - lo)  # [0, 1]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Encode ``batch[key]``."""
        self.check_batch(batch)
        image = check_tensor(
            batch[self.key], name=f"batch[{self.key!r}]", owner=self._owner(),
            channels=self.in_chans, layouts=("CHW",),
        )
        param = next(self.encoder.parameters())
        x = self.preprocess(image.to(param.device)).to(param.dtype)
        with self.encoder_grad():
            feats = self.encoder.forward_features(x)
            tokens = self._to_tokens(self.encoder, feats) if "crossattn" in self.outputs else None
            pooled = self.encoder.forward_head(feats, pre_logits=True) if "vector" in self.outputs else None
        return Conditioning(
            crossattn=None if tokens is None else self.token_proj(tokens),  # (B, L, D)
            vector=None if pooled is None else self.vector_proj(pooled),  # (B, D)
        )

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """Zero embeddings of the output shapes."""
        b = self.check_batch(batch)
        param = next(self.parameters())
        spec = self.output_spec
        zeros = lambda *shape: torch.zeros(*shape, device=param.device, dtype=param.dtype)  # noqa: E731
        return Conditioning(
            crossattn=zeros(b, self.num_tokens, spec.crossattn_dim) if spec.crossattn_dim else None,
            vector=zeros(b, spec.vector_dim) if spec.vector_dim else None,
        )

    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Uniform random images in ``value_range`` at ``image_size``."""
        lo, hi = self.value_range
        u = torch.rand(batch_size, self.in_chans, *self.image_size, generator=generator)
        return {self.key: lo + (hi - lo) * u}
