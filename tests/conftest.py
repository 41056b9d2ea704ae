"""Small stand-in components shared by the diffusion-core tests.

They implement the latentkit interfaces in a few lines each, so the diffusion core is tested
against exactly known behaviour (a local decoder, a plain Euler step, a log-linear schedule)
independently of the built-in components, which have their own tests. Test modules import
them with ``from conftest import ...``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentkit.interfaces import (
    Autoencoder,
    Conditioner,
    Denoiser,
    DiracDistribution,
    Sampler,
    Schedule,
)
from latentkit.random import Generators, rand
from latentkit.specs import (
    LAYOUTS,
    Conditioning,
    ConditioningSpec,
    DataSpec,
    LatentSpec,
    spatial_ndim,
)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class TinyDenoiser(Denoiser):
    """Two convolutions with a timestep / vector / pooled-context embedding; any layout."""

    supported_layouts = tuple(LAYOUTS)

    def __init__(self, in_channels: int = 3, out_channels: int = 3, crossattn_dim: int | None = None,
                 vector_dim: int | None = None, layout: str = "CHW", hidden: int = 16) -> None:
        rank = spatial_ndim(layout)
        super().__init__(in_channels=in_channels, out_channels=out_channels,
                         layouts=[lay for lay, n in LAYOUTS.items() if n == rank],
                         crossattn_dim=crossattn_dim, vector_dim=vector_dim)
        conv = _CONV[rank]
        self.inp = conv(in_channels, hidden, 3, padding=1)
        self.mid = conv(hidden, hidden, 3, padding=1)
        self.out = conv(hidden, out_channels, 3, padding=1)
        self.t_embed = nn.Linear(8, hidden)
        self.ctx = nn.Linear(crossattn_dim, hidden) if crossattn_dim else None
        self.vec = nn.Linear(vector_dim, hidden) if vector_dim else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        x, t, cond = self.prepare_input(x, t, cond)
        freqs = torch.tensor([1.0, 0.1, 0.01, 0.001], device=x.device)
        emb = self.t_embed(torch.cat([(t[:, None] * freqs).sin(), (t[:, None] * freqs).cos()], 1))
        if self.ctx is not None:
            emb = emb + self.ctx(cond.crossattn).mean(1)
        if self.vec is not None:
            emb = emb + self.vec(cond.vector)
        h = F.silu(self.inp(x) + emb.reshape(*emb.shape, *([1] * (x.ndim - 2))))
        return self.out(F.silu(self.mid(h)))


class PoolAutoencoder(Autoencoder):
    """Average-pool encoder, nearest-neighbour decoder (factor 2), with a normalisation.
    Each latent cell decodes to exactly the pixels it covers: a local first stage."""

    def __init__(self, channels: int = 3, factor: int = 2) -> None:
        super().__init__(DataSpec(channels=channels),
                         LatentSpec(channels=channels, downsampling=factor, scaling_factor=1.5,
                                    shift_factor=0.1))
        self.factor = factor
        self.weight = nn.Parameter(torch.ones(()))  # a frozen parameter, to test freezing

    def encode(self, x: torch.Tensor) -> DiracDistribution:
        return DiracDistribution(F.avg_pool2d(self.check_data(x), self.factor) * self.weight)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.check_latent(z), scale_factor=self.factor, mode="nearest")


class LogLinearSchedule(Schedule):
    """Continuous schedule: geometric sampling grid, log-uniform training sigmas,
    ``t = ln(sigma) / 4``."""

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 20.0, sigma_data: float = 0.5) -> None:
        self._min, self._max, self.sigma_data = sigma_min, sigma_max, sigma_data

    @property
    def sigma_min(self) -> float:
        return self._min

    @property
    def sigma_max(self) -> float:
        return self._max

    def sigmas(self, steps: int, spacing: str | None = None, *, device: Any = "cpu") -> torch.Tensor:
        s = torch.exp(torch.linspace(math.log(self._max), math.log(self._min), steps))
        return torch.cat([s, s.new_zeros(1)]).to(device)

    def sample_training_sigmas(self, batch_size: int, generator: Generators = None, *,
                               device: Any = "cpu") -> torch.Tensor:
        u = rand((batch_size,), generator, device=device)
        return torch.exp(math.log(self._min) + u * (math.log(self._max) - math.log(self._min)))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (4.0 * t).exp()


class EulerStandIn(Sampler):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without 2nd order)."""

    def model_calls(self, steps: int) -> int:
        return steps

    def sample(self, denoise: Any, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: Any = None,
               callback: Any = None, generator: Generators = None) -> torch.Tensor:
        extra_args = extra_args or {}
        for i in range(len(sigmas) - 1):
            denoised = denoise(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)
            if callback is not None:
                callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1],
                          "denoised": denoised})
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x


class LabelConditioner(Conditioner):
    """Class labels -> a learned embedding as one crossattn token and/or a vector; the null
    input is an extra learned embedding."""

    def __init__(self, num_classes: int = 5, dim: int = 8, crossattn: bool = True, vector: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__(output_spec=ConditioningSpec(crossattn_dim=dim if crossattn else None,
                                                      vector_dim=dim if vector else None),
                         input_keys=["label"], dropout=dropout)
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        self.crossattn, self.vector = crossattn, vector

    def _cond(self, labels: torch.Tensor) -> Conditioning:
        e = self.embedding(labels.to(self.embedding.weight.device))
        return Conditioning(crossattn=e[:, None] if self.crossattn else None,
                            vector=e if self.vector else None)

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        self.check_batch(batch)
        return self._cond(torch.as_tensor(batch["label"]))

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        n = self.check_batch(batch)
        return self._cond(torch.full((n,), self.num_classes, dtype=torch.long))

    def example_batch(self, batch_size: int, *, latent_size: Sequence[int] | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        return {"label": torch.randint(0, self.num_classes, (batch_size,), generator=generator)}


class MaskConcatConditioner(Conditioner):
    """SD-style inpainting conditioning: the latent-size mask and the normalised latent of the
    masked image, concatenated (1 + latent channels). Null = the same input."""

    def __init__(self, latent_channels: int = 3) -> None:
        super().__init__(output_spec=ConditioningSpec(concat_channels=1 + latent_channels),
                         input_keys=["mask", "masked_image"], trainable=False)
        self.autoencoder: Autoencoder | None = None
        self.seen: list[dict[str, Any]] = []

    def bind(self, autoencoder: Autoencoder) -> None:
        self.__dict__["autoencoder"] = autoencoder

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        self.check_batch(batch)
        self.seen.append(dict(batch))
        ae = self.autoencoder
        assert ae is not None
        z = ae.encode_normalized(batch["masked_image"], sample=False)
        mask = F.interpolate(batch["mask"], size=z.shape[2:], mode="nearest")
        return Conditioning(concat=torch.cat([mask, z], 1))

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        return self.forward(batch)

    def example_batch(self, batch_size: int, *, latent_size: Sequence[int] | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        assert self.autoencoder is not None and latent_size is not None
        size = self.autoencoder.latent_spec.data_size(latent_size)
        mask = (torch.rand(batch_size, 1, *size, generator=generator) > 0.5).float()
        image = torch.rand(batch_size, 3, *size, generator=generator) * 2 - 1
        return {"mask": mask, "masked_image": image * (1 - mask)}


class LowResConditioner(Conditioner):
    """Super-resolution conditioning: ``low_res`` upsampled (nearest) to the latent size."""

    def __init__(self, channels: int = 3, scale: int = 2) -> None:
        super().__init__(output_spec=ConditioningSpec(concat_channels=channels),
                         input_keys=["low_res"], trainable=False)
        self.scale = scale

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        self.check_batch(batch)
        return Conditioning(concat=F.interpolate(batch["low_res"], scale_factor=self.scale, mode="nearest"))

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        return self.forward(batch)

    def example_batch(self, batch_size: int, *, latent_size: Sequence[int] | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        size = [s // self.scale for s in (latent_size or (8, 8))]
        return {"low_res": torch.rand(batch_size, 3, *size, generator=generator)}


class CallCounter(nn.Module):
    """Wraps a denoiser backbone and records the batch size of every forward call."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        self.batch_sizes.append(int(x.shape[0]))
        return self.inner(x, t, cond)



@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test with one intra-op thread (tiny models are many times faster that way on a
    shared, oversubscribed machine); the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
