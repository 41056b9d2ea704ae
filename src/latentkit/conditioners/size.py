"""SDXL's size and crop conditioning (Podell et al. 2023, Sec. 2.2).

Each of ``original_size`` (height, width), ``crop_coords`` (top, left) and ``target_size``
(height, width) is a (B, 2) tensor; every one of the 6 numbers is embedded with the sinusoidal
("Fourier feature") timestep embedding of Ho et al. 2020 / Vaswani et al. 2017 in SDXL's
``cos``-first form, ``[cos(v * f_k), sin(v * f_k)]`` with ``f_k = max_period ** (-k / half)``,
``k = 0 .. half - 1``, and the embeddings are concatenated: 6 * ``embed_dim`` numbers (1536 with
SDXL's ``embed_dim = 256``), the ``vector`` SDXL adds (with the pooled text embedding) to the
timestep embedding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from latentkit.conditioners.base import BaseConditioner, as_pair_tensor
from latentkit.specs import Conditioning, ConditioningSpec

__all__ = ["SizeConditioner", "fourier_embedding"]

SDXL_KEYS: tuple[str, ...] = ("original_size", "crop_coords", "target_size")


def fourier_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of every entry of ``values`` (shape (N,)) -> (N, dim), SDXL's
    ``timestep_embedding`` (cos half first): ``[cos(v f_k)]_k ++ [sin(v f_k)]_k`` with
    ``f_k = exp(-ln(max_period) k / (dim / 2))``. Computed in float64."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64, device=values.device)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    args = values.to(torch.float64)[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SizeConditioner(BaseConditioner):
    """``original_size``, ``crop_coords``, ``target_size`` (B, 2 each) -> ``vector``
    (B, 2 * embed_dim * len(keys)). No parameters.

    The null input is the same embedding by default (SDXL keeps the size conditioning in the
    unconditional branch and never drops it); ``null="zeros"`` gives zeros instead.
    """

    def __init__(
        self,
        embed_dim: int = 256,  # embedding width per number (SDXL: 256)
        *,
        keys: Iterable[str] = SDXL_KEYS,  # batch keys, each (B, 2), in output order
        max_period: float = 10000.0,  # lowest frequency 1 / max_period
        null: str = "same",  # "same" (SDXL) or "zeros"
        dtype: torch.dtype = torch.float32,  # output dtype
        dropout: float = 0.0,  # probability of the null input in training
        trainable: bool = False,  # no parameters; kept for the common interface
    ) -> None:
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"SizeConditioner: embed_dim must be a positive even int, got {embed_dim!r}")
        if null not in ("same", "zeros"):
            raise ValueError(f"SizeConditioner: null must be 'same' or 'zeros', got {null!r}")
        keys = tuple(keys)
        if not keys:
            raise ValueError("SizeConditioner: keys must name at least one (B, 2) batch entry")
        super().__init__(
            output_spec=ConditioningSpec(vector_dim=2 * embed_dim * len(keys)),
            input_keys=keys,
            dropout=dropout,
            trainable=trainable,
        )
        self.embed_dim = embed_dim
        self.keys = keys
        self.max_period = float(max_period)
        self.null_mode = null
        self.dtype = dtype
        self.set_trainable(trainable)  # nothing to train: `trainable` reads False

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Embed the sizes: for each key, both numbers, then the next key (as SDXL)."""
        self.check_batch(batch)
        owner = self._owner()
        pairs = [as_pair_tensor(batch[k], key=k, owner=owner) for k in self.keys]
        b = pairs[0].shape[0]
        pairs = [as_pair_tensor(p, key=k, owner=owner, batch=b) for k, p in zip(self.keys, pairs)]
        values = torch.cat(pairs, dim=1)  # (B, 2 * len(keys))
        emb = fourier_embedding(values.flatten(), self.embed_dim, self.max_period)  # (B*2K, D)
        return Conditioning(vector=emb.reshape(b, -1).to(self.dtype))  # (B, 2K*D)

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """Same as :meth:`forward` (``null="same"``) or zeros (``null="zeros"``)."""
        cond = self.forward(batch)
        return cond if self.null_mode == "same" else cond.map(torch.zeros_like)

    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Random sizes in [64, 1024] and crop offsets in [0, 256)."""
        out = {}
        for k in self.keys:
            lo, hi = (0, 256) if "crop" in k else (64, 1025)
            out[k] = torch.randint(lo, hi, (batch_size, 2), generator=generator)
        return out
