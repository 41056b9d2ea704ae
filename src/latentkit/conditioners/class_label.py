"""Class-label conditioning: a learned embedding per class plus one for the null class.

LDM's class-conditional ImageNet model feeds the class embedding as a single cross-attention
token (Rombach et al. 2022, Sec. 4.2, ``ClassEmbedder``); ADM and DiT add it to the timestep
embedding (Dhariwal & Nichol 2021; Peebles & Xie 2023), which is latentkit's ``vector`` entry.
Classifier-free guidance (Ho & Salimans 2022) needs an unconditional input: row
``num_classes`` of the table is the learned null class, as in DiT's ``LabelEmbedder``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from latentkit.conditioners.base import BaseConditioner, as_label_tensor, parse_outputs
from latentkit.specs import Conditioning, ConditioningSpec

__all__ = ["ClassLabelConditioner"]


class ClassLabelConditioner(BaseConditioner):
    """``label`` (B,) integers -> learned embedding as ``vector`` (B, D) and/or ``crossattn``
    (B, 1, D). The null class (index ``num_classes``) is the unconditional input; a label equal
    to ``num_classes`` in the batch selects it explicitly."""

    def __init__(
        self,
        num_classes: int,  # number of real classes; index num_classes is the null class
        embed_dim: int = 512,  # D of the produced vector / token
        *,
        outputs: str | Iterable[str] = "vector",  # "vector", "crossattn" or both
        key: str = "label",  # batch key of the labels
        dropout: float = 0.0,  # probability of the null class in training (CFG)
        trainable: bool = True,  # train the embedding table with the denoiser
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"ClassLabelConditioner: num_classes must be a positive int, got {num_classes!r}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"ClassLabelConditioner: embed_dim must be a positive int, got {embed_dim!r}")
        self.outputs = parse_outputs(outputs, ("crossattn", "vector"), "ClassLabelConditioner")
        super().__init__(
            output_spec=ConditioningSpec(
                crossattn_dim=embed_dim if "crossattn" in self.outputs else None,
                vector_dim=embed_dim if "vector" in self.outputs else None,
            ),
            input_keys=(key,),
            dropout=dropout,
            trainable=trainable,
        )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.key = key
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)  # (num_classes + null, D)
        self.set_trainable(trainable)

    @property
    def null_label(self) -> int:
        """Index of the null class."""
        return self.num_classes

    def _embed(self, labels: torch.Tensor) -> Conditioning:
        with self.encoder_grad():
            emb = self.embedding(labels.to(self.embedding.weight.device))  # (B, D)
        return Conditioning(
            crossattn=emb[:, None, :] if "crossattn" in self.outputs else None,  # (B, 1, D)
            vector=emb if "vector" in self.outputs else None,
        )

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Embed ``batch[key]``."""
        self.check_batch(batch)
        labels = as_label_tensor(batch[self.key], key=self.key, owner=self._owner(), high=self.num_classes, null=True)
        return self._embed(labels)

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """The null-class embedding for every item."""
        b = self.check_batch(batch)
        return self._embed(torch.full((b,), self.null_label, dtype=torch.long))

    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Uniformly drawn real class labels."""
        return {self.key: torch.randint(0, self.num_classes, (batch_size,), generator=generator)}
