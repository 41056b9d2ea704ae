"""Several conditioners in one, each with its own inputs, dropout rate and trainable flag: the
"general conditioner" of SDXL (Podell et al. 2023; ``sgm.modules.GeneralConditioner``).

Outputs of the same entry are concatenated as SDXL does: ``vector`` along D, ``concat`` along
channels, and ``crossattn`` along the feature axis D by default (SDXL joins CLIP ViT-L's 768
and OpenCLIP bigG's 1280 token features into 2048, so every child must give the same number of
tokens L); ``crossattn_join="tokens"`` joins along L instead (every child must give the same
D), e.g. text tokens followed by an image or class token. Each child's dropout is drawn
independently in :meth:`CombinedConditioner.forward_with_dropout`, as SDXL's per-embedder
``ucg_rate``; the combined ``dropout`` additionally drops all children at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from latentkit.conditioners.base import BaseConditioner, set_conditioner_trainable
from latentkit.errors import ShapeError
from latentkit.interfaces import Autoencoder, Conditioner
from latentkit.random import Generators, rand
from latentkit.specs import Conditioning, ConditioningSpec

__all__ = ["CombinedConditioner"]

_ENTRY_KEYS = {"name", "config", "dropout", "trainable"}


def _build_child(entry: Conditioner | Mapping[str, Any], index: int) -> Conditioner:
    if isinstance(entry, Conditioner):
        return entry
    if not isinstance(entry, Mapping) or "name" not in entry or set(entry) - _ENTRY_KEYS:
        raise ValueError(
            f"CombinedConditioner: conditioners[{index}] must be a Conditioner or a dict with "
            f"'name' and optional 'config', 'dropout', 'trainable'; got {entry!r}"
        )
    import latentkit

    child = latentkit.create("conditioner", entry["name"], **dict(entry.get("config") or {}))
    if not isinstance(child, Conditioner):
        raise TypeError(
            f"CombinedConditioner: conditioner {entry['name']!r} created a {type(child).__name__}, "
            "not a latentkit Conditioner"
        )
    return child  # type: ignore[no-any-return]


class CombinedConditioner(BaseConditioner):
    """Children's conditionings joined entry by entry (see the module docstring).

    ``conditioners`` holds built :class:`~latentkit.interfaces.Conditioner` instances or dicts
    ``{"name": ..., "config": {...}, "dropout": 0.1, "trainable": True}`` created through
    ``latentkit.create("conditioner", name, **config)``; ``dropout`` / ``trainable`` in a dict
    override the child's own.
    """

    conditioners: Any  # nn.ModuleList of Conditioner

    def __init__(
        self,
        conditioners: Sequence[Conditioner | Mapping[str, Any]],  # the children, in output order
        *,
        crossattn_join: str = "features",  # "features" (along D, SDXL) or "tokens" (along L)
        dropout: float = 0.0,  # probability of dropping all children at once
    ) -> None:
        if crossattn_join not in ("features", "tokens"):
            raise ValueError(
                f"CombinedConditioner: crossattn_join must be 'features' or 'tokens', got {crossattn_join!r}"
            )
        if isinstance(conditioners, (str, bytes)) or not isinstance(conditioners, Iterable) or not conditioners:
            raise ValueError("CombinedConditioner: conditioners must be a non-empty list")
        children = [_build_child(entry, i) for i, entry in enumerate(conditioners)]
        for entry, child in zip(conditioners, children):
            if isinstance(entry, Mapping):
                if "dropout" in entry:
                    rate = float(entry["dropout"])
                    if not 0.0 <= rate <= 1.0:
                        raise ValueError(f"CombinedConditioner: dropout of {entry['name']!r} must lie in [0, 1], got {rate}")
                    child.dropout = rate
                if "trainable" in entry:
                    set_conditioner_trainable(child, bool(entry["trainable"]))
        spec = self._joined_spec(children, crossattn_join)
        keys = list(dict.fromkeys(k for c in children for k in c.input_keys))
        super().__init__(
            output_spec=spec,
            input_keys=keys,
            dropout=dropout,
            trainable=any(c.trainable for c in children),
        )
        self.crossattn_join = crossattn_join
        self.conditioners = nn.ModuleList(children)

    @staticmethod
    def _joined_spec(children: Sequence[Conditioner], join: str) -> ConditioningSpec:
        widths = [c.output_spec.crossattn_dim for c in children if c.output_spec.crossattn_dim]
        if join == "tokens" and len(set(widths)) > 1:
            raise ValueError(
                "CombinedConditioner: crossattn_join='tokens' joins tokens along L and needs one "
                f"width D, but the children give widths {widths}; use crossattn_join='features'"
            )
        vectors = [c.output_spec.vector_dim for c in children if c.output_spec.vector_dim]
        return ConditioningSpec(
            crossattn_dim=(sum(widths) if join == "features" else widths[0]) if widths else None,
            concat_channels=sum(c.output_spec.concat_channels for c in children),
            vector_dim=sum(vectors) if vectors else None,
        )

    def set_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze every child."""
        for child in self.conditioners:
            set_conditioner_trainable(child, trainable)
        self.trainable = any(c.trainable for c in self.conditioners)

    def train(self, mode: bool = True) -> CombinedConditioner:
        """Each child decides (frozen children stay in eval mode)."""
        nn.Module.train(self, mode)
        return self

    def bind(self, autoencoder: Autoencoder) -> None:
        """Bind every child."""
        for child in self.conditioners:
            child.bind(autoencoder)

    def _join(self, parts: Sequence[Conditioning]) -> Conditioning:
        out: dict[str, torch.Tensor] = {}
        for name in ("crossattn", "concat", "vector"):
            tensors = [(c, getattr(p, name)) for c, p in zip(self.conditioners, parts) if getattr(p, name) is not None]
            if not tensors:
                continue
            if name == "crossattn":
                axis = 2 if self.crossattn_join == "features" else 1
                other = 1 if axis == 2 else 2
                sizes = {type(c).__name__ + f"[{i}]": int(t.shape[other]) for i, (c, t) in enumerate(tensors)}
                if len(set(sizes.values())) > 1:
                    what = "token counts L" if axis == 2 else "widths D"
                    hint = "tokens" if axis == 2 else "features"
                    raise ShapeError(
                        f"CombinedConditioner: crossattn_join={self.crossattn_join!r} needs equal "
                        f"{what}, got {sizes}; try crossattn_join={hint!r}"
                    )
            elif name == "concat":
                axis = 1
                spatial = {tuple(t.shape[2:]) for _, t in tensors}
                if len(spatial) > 1:
                    raise ShapeError(f"CombinedConditioner: concat entries have different spatial sizes {sorted(spatial)}")
            else:
                axis = 1
            dtype = tensors[0][1].dtype
            for _, t in tensors[1:]:
                dtype = torch.promote_types(dtype, t.dtype)
            out[name] = torch.cat([t.to(dtype) for _, t in tensors], dim=axis)
        return Conditioning(**out)

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Every child's conditioning, joined."""
        self.check_batch(batch)
        return self._join([child(batch) for child in self.conditioners])

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """Every child's null conditioning, joined."""
        self.check_batch(batch)
        return self._join([child.null(batch) for child in self.conditioners])

    def forward_with_dropout(self, batch: Mapping[str, Any], generator: Generators = None) -> Conditioning:
        """Each child's :meth:`forward_with_dropout` (independent draws at its own rate), joined;
        then, with probability ``dropout``, an item's whole conditioning is the joint null."""
        self.check_batch(batch)
        cond = self._join([child.forward_with_dropout(batch, generator) for child in self.conditioners])
        if self.dropout <= 0.0 or cond.batch_size is None:
            return cond
        device = next((t.device for _, t in cond.items()), torch.device("cpu"))
        drop = rand((cond.batch_size,), generator, device=device) < self.dropout
        return cond.where(drop, self.null(batch)) if bool(drop.any()) else cond

    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """The union of the children's example batches (the first child to name a key wins)."""
        out: dict[str, Any] = {}
        for child in self.conditioners:
            for k, v in child.example_batch(batch_size, latent_size=latent_size, generator=generator).items():
                out.setdefault(k, v)
        return out
