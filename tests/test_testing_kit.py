"""The conformance kit itself: correct minimal components pass every check, and deliberately
broken ones are caught by the check named after the contract they break."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import latentkit
from latentkit.errors import ShapeError
from latentkit.interfaces import (
    Autoencoder,
    Conditioner,
    Denoiser,
    DiagonalGaussianDistribution,
    Sampler,
    Schedule,
    check_tensor,
)
from latentkit.plugins import ComponentInfo
from latentkit.random import randn, randn_like
from latentkit.specs import LAYOUTS, Conditioning, ConditioningSpec, DataSpec, LatentSpec
from latentkit.testing import (
    CheckResult,
    ConformanceError,
    NotApplicable,
    check_autoencoder,
    check_conditioner,
    check_denoiser,
    check_sampler,
    check_schedule,
    iter_checks,
    parametrize_with_checks,
    run_checks,
)

# =========================================================================== correct parts

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class TinyDenoiser(Denoiser):
    """Conv net with a 2x down/up path (size_multiple 2), time embedding, pooled
    cross-attention context and vector input; zero-initialised output like UNet/DiT."""

    supported_layouts = ("CL", "CHW")

    def __init__(self, in_channels: int = 3, out_channels: int = 2, crossattn_dim: int | None = 5,
                 vector_dim: int | None = 4, layout: str = "CHW", hidden: int = 8) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels, layouts=(layout,),
                         crossattn_dim=crossattn_dim, vector_dim=vector_dim, size_multiple=2)
        self.ndim = LAYOUTS[layout]
        conv = _CONV[self.ndim]
        self.conv_in = conv(in_channels, hidden, 3, padding=1)
        self.time = nn.Linear(2, hidden)
        self.ctx = nn.Linear(crossattn_dim, hidden) if crossattn_dim else None
        self.vec = nn.Linear(vector_dim, hidden) if vector_dim else None
        self.mid = conv(hidden, hidden, 3, padding=1)
        self.conv_out = conv(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        emb = self.time(torch.stack([torch.sin(t / 100), torch.cos(t / 100)], dim=-1))
        if self.ctx is not None:
            emb = emb + self.ctx(cond.crossattn).mean(dim=1)
        if self.vec is not None:
            emb = emb + self.vec(cond.vector)
        return emb.view(*emb.shape, *([1] * self.ndim))

    def body(self, h: torch.Tensor) -> torch.Tensor:
        down = getattr(F, f"avg_pool{self.ndim}d")(h, 2)
        return h + F.interpolate(self.mid(down), scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        x, t, cond = self.prepare_input(x, t, cond)
        h = F.silu(self.conv_in(x) + self.embed(t, cond))
        return self.conv_out(F.silu(self.body(h)))


class PatchVideoDenoiser(Denoiser):
    """Video-transformer-like CTHW denoiser with patch size (1, 2, 2): each frame's 2x2
    patches are embedded, mixed over time, and un-patchified, so any frame count T works but
    H and W must be even (``size_multiple=(1, 2, 2)``)."""

    supported_layouts = ("CTHW",)

    def __init__(self, in_channels: int = 3, out_channels: int = 2, crossattn_dim: int | None = 5,
                 vector_dim: int | None = 4, hidden: int = 8) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels, layouts=("CTHW",),
                         crossattn_dim=crossattn_dim, vector_dim=vector_dim, size_multiple=(1, 2, 2))
        self.patch = nn.Conv3d(in_channels, hidden, (1, 2, 2), stride=(1, 2, 2))
        self.time = nn.Linear(2, hidden)
        self.ctx = nn.Linear(crossattn_dim, hidden) if crossattn_dim else None
        self.vec = nn.Linear(vector_dim, hidden) if vector_dim else None
        self.temporal = nn.Conv3d(hidden, hidden, (3, 1, 1), padding=(1, 0, 0))
        self.unpatch = nn.ConvTranspose3d(hidden, out_channels, (1, 2, 2), stride=(1, 2, 2))
        nn.init.zeros_(self.unpatch.weight)
        nn.init.zeros_(self.unpatch.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        x, t, cond = self.prepare_input(x, t, cond)
        emb = self.time(torch.stack([torch.sin(t / 100), torch.cos(t / 100)], dim=-1))
        if self.ctx is not None:
            emb = emb + self.ctx(cond.crossattn).mean(dim=1)
        if self.vec is not None:
            emb = emb + self.vec(cond.vector)
        h = F.silu(self.patch(x) + emb[:, :, None, None, None])  # (B, hidden, T, H/2, W/2)
        h = h + self.temporal(h)
        return self.unpatch(F.silu(h))  # (B, out_channels, T, H, W)


class TinyAutoencoder(Autoencoder):
    """KL autoencoder, 3 data channels, 2 latent channels, downsampling 2 (CHW)."""

    def __init__(self) -> None:
        super().__init__(DataSpec(channels=3), LatentSpec(channels=2, downsampling=2, scaling_factor=0.5))
        self.encoder = nn.Conv2d(3, 4, 2, stride=2)
        self.decoder = nn.ConvTranspose2d(2, 3, 2, stride=2)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.encoder(self.check_data(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.check_latent(z))


@attrs.frozen
class CausalTimeSpec(LatentSpec):
    """CTHW latents whose time axis keeps the first frame alone: T_latent = 1 + (T - 1) / f_t
    (as causal video tokenizers do); height and width divide by their factors."""

    def latent_size(self, data_spatial: Sequence[int]) -> tuple[int, ...]:
        size = tuple(int(s) for s in data_spatial)
        ft = self.downsampling[0]
        if len(size) != 3 or size[0] < 1 or (size[0] - 1) % ft:
            raise ShapeError(f"expected (1 + {ft} k, H, W) frames, got data size {size}")
        space = LatentSpec(channels=self.channels, downsampling=self.downsampling[1:])
        return (1 + (size[0] - 1) // ft, *space.latent_size(size[1:]))

    def data_size(self, latent_spatial: Sequence[int]) -> tuple[int, ...]:
        t, h, w = (int(s) for s in latent_spatial)
        ft, fh, fw = self.downsampling
        return (1 + (t - 1) * ft, h * fh, w * fw)


class TinyCausalAutoencoder(Autoencoder):
    """CTHW KL autoencoder with factors (2, 2, 2) and a causal time axis: the first frame is
    padded in front (replicated) so that it is encoded alone, and decode drops that copy."""

    supported_layouts = ("CTHW",)

    def __init__(self) -> None:
        super().__init__(DataSpec(channels=2, layout="CTHW"),
                         CausalTimeSpec(channels=2, layout="CTHW", downsampling=2, scaling_factor=0.5))
        self.encoder = nn.Conv3d(2, 4, 2, stride=2)
        self.decoder = nn.ConvTranspose3d(2, 2, 2, stride=2)

    def check_data(self, x: Any) -> torch.Tensor:
        x = check_tensor(x, name="data", owner="TinyCausalAutoencoder.encode", channels=2,
                         layouts=("CTHW",), size_multiple=(1, 2, 2))
        self._latent_spec.latent_size(x.shape[2:])  # the 1 + 2 k frame rule
        return x

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        x = self.check_data(x)
        return DiagonalGaussianDistribution(self.encoder(torch.cat([x[:, :, :1], x], dim=2)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.check_latent(z))[:, :, 1:]


class TinyLabelConditioner(Conditioner):
    """Class labels -> one crossattn token and a vector; the null class is index num_classes."""

    def __init__(self, num_classes: int = 5, dim: int = 6, dropout: float = 0.1) -> None:
        super().__init__(output_spec=ConditioningSpec(crossattn_dim=dim, vector_dim=dim),
                         input_keys=("label",), dropout=dropout)
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        self.proj = nn.Linear(dim, dim)

    def _embed(self, labels: torch.Tensor) -> Conditioning:
        e = self.embedding(labels)
        return Conditioning(crossattn=self.proj(e)[:, None], vector=e)

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        self.check_batch(batch)
        labels = batch["label"]
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
            raise ShapeError(f"TinyLabelConditioner: label must be (B,), got shape {tuple(labels.shape)}")
        return self._embed(labels)

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        b = self.check_batch(batch)
        return self._embed(torch.full((b,), self.num_classes, dtype=torch.long))

    def example_batch(self, batch_size: int, *, latent_size: Sequence[int] | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        return {"label": torch.randint(0, self.num_classes, (batch_size,), generator=generator)}


class TinyMaskConditioner(Conditioner):
    """Inpainting-style concat: the mask resized to the latent size, any spatial rank."""

    def __init__(self) -> None:
        super().__init__(output_spec=ConditioningSpec(concat_channels=1), input_keys=("mask",), trainable=False)

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        self.check_batch(batch)
        mask = check_tensor(batch["mask"], name="mask", owner="TinyMaskConditioner", channels=1,
                            layouts=("CL", "CHW", "CTHW"))
        return Conditioning(concat=mask * 2.0 - 1.0)

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        self.check_batch(batch)
        return Conditioning(concat=torch.zeros_like(batch["mask"]))

    def example_batch(self, batch_size: int, *, latent_size: Sequence[int] | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        size = tuple(latent_size or (8, 8))
        return {"mask": (torch.rand((batch_size, 1, *size), generator=generator) > 0.5).float()}


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


class EulerSampler(Sampler):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without the
    Heun correction)."""

    order = 1

    def model_calls(self, steps: int) -> int:
        return steps

    def step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        return x + _to_d(x, sigma, denoised) * (sigma_next - sigma)

    def sample(self, denoise: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: Mapping[str, Any] | None = None, callback: Any = None,
               generator: Any = None) -> torch.Tensor:
        sigmas = sigmas.to(x.dtype)
        for i in range(len(sigmas) - 1):
            denoised = denoise(x, sigmas[i].expand(x.shape[0]), **(extra_args or {}))
            if callback is not None:
                callback({"i": i, "x": x, "sigma": float(sigmas[i]), "sigma_next": float(sigmas[i + 1]),
                          "denoised": denoised})
            x = self.step(x, sigmas[i], sigmas[i + 1], denoised, generator)
        return x


class HeunSampler(EulerSampler):
    """Heun's method (Karras et al. 2022, Alg. 1): an Euler predictor and a trapezoidal
    corrector that averages the slopes at both ends with ``weights``; Euler for the step to 0."""

    order = 2
    weights = (0.5, 0.5)

    def model_calls(self, steps: int) -> int:
        return max(2 * steps - 1, 1)

    def sample(self, denoise: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: Mapping[str, Any] | None = None, callback: Any = None,
               generator: Any = None) -> torch.Tensor:
        sigmas, extra = sigmas.to(x.dtype), dict(extra_args or {})
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = denoise(x, sigma.expand(x.shape[0]), **extra)
            if callback is not None:
                callback({"i": i, "x": x, "sigma": float(sigma), "sigma_next": float(sigma_next),
                          "denoised": denoised})
            d = _to_d(x, sigma, denoised)
            if float(sigma_next) == 0.0:
                x = x + d * (sigma_next - sigma)
                continue
            x_2 = x + d * (sigma_next - sigma)
            d_2 = _to_d(x_2, sigma_next, denoise(x_2, sigma_next.expand(x.shape[0]), **extra))
            x = x + (self.weights[0] * d + self.weights[1] * d_2) * (sigma_next - sigma)
        return x


class EulerAncestralSampler(EulerSampler):
    """Ancestral Euler (Ho et al. 2020 ancestral sampling in sigma space, k-diffusion's split
    into sigma_down and sigma_up)."""

    stochastic = True
    noise_scale = 1.0

    def noise(self, x: torch.Tensor, generator: Any) -> torch.Tensor:
        return randn_like(x, generator)

    def step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        up = torch.minimum(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
        down = (sigma_next**2 - up**2).sqrt()
        x = x + _to_d(x, sigma, denoised) * (down - sigma)
        return x + self.noise(x, generator) * up * self.noise_scale


class ConsistencySampler(EulerSampler):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): jump to the model's x0,
    re-noise to the next level. Needs a consistency function, not a posterior mean."""

    stochastic = True
    requires_consistency_model = True

    def step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        return denoised + sigma_next * randn_like(x, generator)


class KarrasSchedule(Schedule):
    """EDM schedule (Karras et al. 2022): log-normal training sigmas, t = ln(sigma) / 4."""

    spacings = ("karras", "exponential")

    @property
    def sigma_min(self) -> float:
        return 0.002

    @property
    def sigma_max(self) -> float:
        return 80.0

    def sigmas(self, steps: int, spacing: str | None = None, *, device: Any = "cpu") -> torch.Tensor:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        if (spacing or "karras") == "karras":
            hi, lo = self.sigma_max ** (1 / 7), self.sigma_min ** (1 / 7)
            s = (hi + ramp * (lo - hi)) ** 7
        else:
            s = torch.exp(math.log(self.sigma_max) + ramp * (math.log(self.sigma_min) - math.log(self.sigma_max)))
        return torch.cat([s, s.new_zeros(1)]).float().to(device)

    def sample_training_sigmas(self, batch_size: int, generator: Any = None, *, device: Any = "cpu") -> torch.Tensor:
        return torch.exp(-1.2 + 1.2 * randn((batch_size,), generator, device=device))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.log(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(4.0 * t)


# =========================================================================== broken parts


class BatchNormDenoiser(TinyDenoiser):
    """BatchNorm couples batch items in training mode."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.norm = nn.BatchNorm2d(8)

    def body(self, h: torch.Tensor) -> torch.Tensor:
        return super().body(self.norm(h))


class UncheckedDenoiser(TinyDenoiser):
    """Skips prepare_input: a wrong channel count surfaces as a raw torch error."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        cond = cond or Conditioning()
        if cond.concat is not None:
            x = torch.cat([x, cond.concat], dim=1)
        h = F.silu(self.conv_in(x) + self.embed(t, cond))
        return self.conv_out(F.silu(self.body(h)))


class NoisyDenoiser(TinyDenoiser):
    """Adds fresh noise in eval mode."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        out = super().forward(x, t, cond)
        return out + 1e-3 * torch.randn_like(out)


class UnusedParameterDenoiser(TinyDenoiser):
    """A registered parameter no forward path reaches."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.forgotten = nn.Parameter(torch.ones(3))


class TimeBlindDenoiser(TinyDenoiser):
    """Ignores t (the timestep embedding is never added)."""

    def embed(self, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return super().embed(torch.zeros_like(t), cond)


class CroppingDenoiser(TinyDenoiser):
    """Returns one row too few."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        return super().forward(x, t, cond)[..., :-1, :]


class MisdeclaredMultipleDenoiser(PatchVideoDenoiser):
    """Overwrites its valid declaration with two factors for three spatial axes."""

    def __init__(self) -> None:
        super().__init__()
        self.size_multiple = (2, 2)


class HiddenStateDenoiser(TinyDenoiser):
    """Keeps a random output bias as a plain attribute, outside the state_dict."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.hidden_bias = torch.randn(1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        return super().forward(x, t, cond) + self.hidden_bias


class CroppingAutoencoder(TinyAutoencoder):
    """decode drops the last row."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z)[..., :-1, :]


class FloatScaleAutoencoder(TinyAutoencoder):
    """Keeps the latent scale in a Python float: it does not travel with state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 0.5

    @property
    def latent_spec(self) -> LatentSpec:
        import attrs

        return attrs.evolve(self._latent_spec, scaling_factor=self.scale, shift_factor=0.0)

    def set_latent_statistics(self, scaling_factor: float, shift_factor: float = 0.0) -> None:
        self.scale = float(scaling_factor)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scale


class LenientAutoencoder(TinyAutoencoder):
    """Checks channels and rank but not the size: odd sizes are silently floored."""

    def check_data(self, x: Any) -> torch.Tensor:
        return check_tensor(x, name="data", owner="LenientAutoencoder.encode", channels=3, layouts=("CHW",))


class LenientCausalAutoencoder(TinyCausalAutoencoder):
    """Checks the spatial factors but not the 1 + 2 k frame rule: an even T is floored."""

    def check_data(self, x: Any) -> torch.Tensor:
        return check_tensor(x, name="data", owner="LenientCausalAutoencoder.encode", channels=2,
                            layouts=("CTHW",), size_multiple=(1, 2, 2))


@attrs.frozen
class ForgetfulCausalSpec(CausalTimeSpec):
    """data_size forgets the first frame (T = f t): latent_size refuses what it gives."""

    def data_size(self, latent_spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(s) * f for s, f in zip(latent_spatial, self.downsampling))


class ForgetfulSpecAutoencoder(TinyCausalAutoencoder):
    """A causal autoencoder whose spec's data_size does not invert its latent_size."""

    def __init__(self) -> None:
        super().__init__()
        self._latent_spec = ForgetfulCausalSpec(channels=2, layout="CTHW", downsampling=2, scaling_factor=0.5)


class WrongNullConditioner(TinyLabelConditioner):
    """The null conditioning has a single-item batch."""

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        return self._embed(torch.full((1,), self.num_classes, dtype=torch.long))


class GetKeyConditioner(TinyLabelConditioner):
    """batch.get: a missing key crashes later with an unrelated error."""

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        return self._embed(batch.get("label"))  # type: ignore[arg-type]


class BatchMixingConditioner(TinyLabelConditioner):
    """Centres the vector over the batch."""

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        c = super().forward(batch)
        return Conditioning(crossattn=c.crossattn, vector=c.vector - c.vector.mean(0, keepdim=True))


class MiscountingSampler(EulerSampler):
    """Declares one model call per step too many."""

    def model_calls(self, steps: int) -> int:
        return steps + 1


class WrongVarianceSampler(EulerAncestralSampler):
    """Injects 30 % too much noise."""

    noise_scale = 1.3


class BatchNoiseSampler(EulerAncestralSampler):
    """Draws the whole batch's noise from the first generator."""

    def noise(self, x: torch.Tensor, generator: Any) -> torch.Tensor:
        g = generator[0] if isinstance(generator, (list, tuple)) else generator
        return torch.randn(x.shape, generator=g, dtype=x.dtype)


class BadCallbackSampler(EulerSampler):
    """Reports "step" instead of the documented fields."""

    def sample(self, denoise: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: Mapping[str, Any] | None = None, callback: Any = None,
               generator: Any = None) -> torch.Tensor:
        cb = None if callback is None else (lambda d: callback({"step": d["i"], "x": d["x"]}))
        return super().sample(denoise, x, sigmas, extra_args=extra_args, callback=cb, generator=generator)


class TensorSigmaCallbackSampler(EulerSampler):
    """Reports sigma and sigma_next as 0-d tensors, not the documented Python floats."""

    def sample(self, denoise: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: Mapping[str, Any] | None = None, callback: Any = None,
               generator: Any = None) -> torch.Tensor:
        cb = None if callback is None else (lambda d: callback(
            {**d, "sigma": torch.tensor(d["sigma"]), "sigma_next": torch.tensor(d["sigma_next"])}))
        return super().sample(denoise, x, sigmas, extra_args=extra_args, callback=cb, generator=generator)


class LaggingEulerSampler(EulerSampler):
    """Evaluates the ODE derivative at the wrong noise level."""

    def step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        return x + (x - denoised) / (sigma * 1.5) * (sigma_next - sigma)


class WrongWeightsHeunSampler(HeunSampler):
    """Declares order 2 but averages the two slopes 3:1 instead of 1:1: still consistent
    (the weights sum to 1), so it lands near the ODE solution, but first order."""

    weights = (0.75, 0.25)


class StopsAtSigmaMinSampler(EulerSampler):
    """Calls the model and reports the last step as usual, but leaves x at sigma_min instead
    of stepping to sigma 0."""

    def step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        return x if float(sigma_next) == 0.0 else super().step(x, sigma, sigma_next, denoised, generator)


class StopsAtSigmaMinAncestralSampler(EulerAncestralSampler):
    """Ancestral Euler that leaves its samples at sigma_min (with sigma_min's noise in them)."""

    def step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        return x if float(sigma_next) == 0.0 else super().step(x, sigma, sigma_next, denoised, generator)


class SecretlyStochasticSampler(EulerAncestralSampler):
    """Says it is deterministic but injects noise."""

    stochastic = False


class UndeclaredConsistencySampler(ConsistencySampler):
    """Consistency sampling without saying so: with the posterior-mean denoiser every step
    shrinks the samples towards the mean."""

    requires_consistency_model = False


class NoZeroSchedule(KarrasSchedule):
    """Stops at sigma_min instead of ending in 0."""

    def sigmas(self, steps: int, spacing: str | None = None, *, device: Any = "cpu") -> torch.Tensor:
        s = super().sigmas(steps + 1, spacing, device=device)[:-1]
        return s


class BadRoundTripSchedule(KarrasSchedule):
    """t_to_sigma is not the inverse of sigma_to_t."""

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(2.0 * t)


class BatchRandSchedule(KarrasSchedule):
    """Training sigmas from one generator for the whole batch, ignoring per-item generators."""

    def sample_training_sigmas(self, batch_size: int, generator: Any = None, *, device: Any = "cpu") -> torch.Tensor:
        g = generator[0] if isinstance(generator, (list, tuple)) else generator
        return torch.exp(-1.2 + 1.2 * torch.randn((batch_size,), generator=g))


# =========================================================================== correct parts pass

CORRECT = [
    TinyDenoiser(),
    TinyDenoiser(layout="CL", crossattn_dim=None, in_channels=2),
    TinyDenoiser(vector_dim=None),
    PatchVideoDenoiser(),
    TinyAutoencoder(),
    TinyCausalAutoencoder(),
    TinyLabelConditioner(),
    TinyMaskConditioner(),
    EulerSampler(),
    HeunSampler(),
    EulerAncestralSampler(),
    ConsistencySampler(),
    KarrasSchedule(),
]


@parametrize_with_checks(CORRECT)
def test_correct_components_pass(component: Any, check: Callable[[Any], Any]) -> None:
    check(component)


# =========================================================================== broken parts fail

# (factory, the check that must catch it, whether that check is the only one to fail)
BROKEN: list[tuple[Callable[[], Any], str, bool]] = [
    (BatchNormDenoiser, "check_denoiser_batch_independence", True),
    (UncheckedDenoiser, "check_denoiser_wrong_channels", False),
    (UncheckedDenoiser, "check_denoiser_conditioning_widths", False),
    (NoisyDenoiser, "check_denoiser_determinism", False),
    (UnusedParameterDenoiser, "check_denoiser_gradients", True),
    (TimeBlindDenoiser, "check_denoiser_inputs_used", False),
    (CroppingDenoiser, "check_denoiser_output_shapes", False),
    (MisdeclaredMultipleDenoiser, "check_denoiser_declarations", False),
    (CroppingAutoencoder, "check_autoencoder_output_shapes", False),
    (FloatScaleAutoencoder, "check_autoencoder_state_dict_round_trip", False),
    (FloatScaleAutoencoder, "check_autoencoder_normalization", False),
    (LenientAutoencoder, "check_autoencoder_indivisible_size", True),
    (LenientCausalAutoencoder, "check_autoencoder_indivisible_size", True),
    (ForgetfulSpecAutoencoder, "check_autoencoder_declarations", False),
    (WrongNullConditioner, "check_conditioner_null", False),
    (GetKeyConditioner, "check_conditioner_missing_key", False),
    (BatchMixingConditioner, "check_conditioner_batch_independence", True),
    (MiscountingSampler, "check_sampler_model_calls", True),
    (WrongVarianceSampler, "check_sampler_gaussian_moments", True),
    (UndeclaredConsistencySampler, "check_sampler_gaussian_moments", True),
    (BatchNoiseSampler, "check_sampler_per_item_generators", True),
    (BadCallbackSampler, "check_sampler_callback", True),
    (TensorSigmaCallbackSampler, "check_sampler_callback", True),
    (LaggingEulerSampler, "check_sampler_ode_solution", False),
    (SecretlyStochasticSampler, "check_sampler_determinism", False),
    # Each of these passed all nine sampler checks before check_sampler_order / _final_step.
    (WrongWeightsHeunSampler, "check_sampler_order", True),
    (StopsAtSigmaMinSampler, "check_sampler_final_step", True),
    (StopsAtSigmaMinAncestralSampler, "check_sampler_final_step", True),
    (NoZeroSchedule, "check_schedule_sigmas", True),
    (BadRoundTripSchedule, "check_schedule_t_round_trip", True),
    (BatchRandSchedule, "check_schedule_training_sigmas_per_item", True),
]

_KIND_RUNNERS = {
    "autoencoder": check_autoencoder,
    "denoiser": check_denoiser,
    "conditioner": check_conditioner,
    "sampler": check_sampler,
    "schedule": check_schedule,
}


def _failures(component: Any) -> dict[str, str]:
    out = {}
    for name, check in iter_checks(component):
        try:
            check(component)
        except NotApplicable:
            pass
        except ConformanceError as exc:
            out[name] = str(exc)
    return out


@pytest.mark.parametrize(("make", "check_name", "only"), BROKEN,
                         ids=[f"{m.__name__}-{c}" for m, c, _ in BROKEN])
def test_broken_component_fails_the_named_check(make: Callable[[], Any], check_name: str, only: bool) -> None:
    component = make()
    if only:
        failures = _failures(component)
    else:  # only the named check needs to run
        failures = {}
        try:
            dict(iter_checks(component))[check_name](component)
        except ConformanceError as exc:
            failures[check_name] = str(exc)
    assert check_name in failures, f"{check_name} did not catch {make.__name__}; failures: {list(failures)}"
    message = failures[check_name]
    assert message.startswith(check_name)
    assert "contract:" in message and "found:" in message
    if only:
        assert set(failures) == {check_name}, f"unexpected extra failures: {failures}"


def _recorded_encode_sizes(ae: Autoencoder, check_name: str) -> list[tuple[int, ...]]:
    """The data sizes ``check_name`` passes to ``encode`` (recorded on the instance's class)."""
    seen: list[tuple[int, ...]] = []
    encode = type(ae).encode

    def recording(self: Autoencoder, x: torch.Tensor) -> DiagonalGaussianDistribution:
        seen.append(tuple(x.shape[2:]))
        return encode(self, x)

    ae.encode = recording.__get__(ae)  # type: ignore[method-assign]
    dict(iter_checks(ae))[check_name](ae)
    return seen


def test_autoencoder_sizes_come_from_the_spec_size_rule() -> None:
    # Multiples of the factors would give an even frame count, which the causal spec refuses.
    sizes = _recorded_encode_sizes(TinyCausalAutoencoder(), "check_autoencoder_output_shapes")
    assert sizes and all((t - 1) % 2 == 0 and h % 2 == 0 and w % 2 == 0 for t, h, w in sizes), sizes
    assert any(t > 1 for t, _, _ in sizes), f"only single frames drawn: {sizes}"
    # Plain specs still get seeded multiples of the factors, the same on every run.
    plain = _recorded_encode_sizes(TinyAutoencoder(), "check_autoencoder_output_shapes")
    assert plain == _recorded_encode_sizes(TinyAutoencoder(), "check_autoencoder_output_shapes")
    assert all(s % 2 == 0 for size in plain for s in size), plain


@pytest.mark.parametrize("make", [TinyAutoencoder, TinyCausalAutoencoder])
def test_indivisible_size_check_feeds_a_size_the_spec_refuses(make: Callable[[], Autoencoder]) -> None:
    ae = make()
    [size] = _recorded_encode_sizes(ae, "check_autoencoder_indivisible_size")
    with pytest.raises(ShapeError):
        ae.latent_spec.latent_size(size)
    if isinstance(ae, TinyCausalAutoencoder):
        assert size[0] % 2 == 0, f"expected an even (invalid) frame count, got {size}"


def test_indivisible_size_check_skips_when_the_spec_accepts_every_size() -> None:
    @attrs.frozen
    class PaddingSpec(LatentSpec):
        """Data is padded up to a multiple of the factors: every size is valid."""

        def latent_size(self, data_spatial: Sequence[int]) -> tuple[int, ...]:
            return tuple(-(-int(s) // f) for s, f in zip(data_spatial, self.downsampling))

    ae = TinyAutoencoder()
    ae._latent_spec = PaddingSpec(channels=2, downsampling=2, scaling_factor=0.5)
    with pytest.raises(NotApplicable, match="accepts every size tried"):
        dict(iter_checks(ae))["check_autoencoder_indivisible_size"](ae)


# =========================================================================== per-axis size_multiple


def _recorded_forward_sizes(den: Denoiser) -> list[tuple[int, ...]]:
    """The spatial sizes every denoiser check passes to ``forward`` (deep copies included:
    the recording wrapper is on a subclass, which copies keep)."""
    seen: list[tuple[int, ...]] = []

    class Recording(type(den)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
            seen.append(tuple(x.shape[2:]))
            return super().forward(x, t, cond)

    den.__class__ = Recording
    for _, check in iter_checks(den):
        check(den)
    return seen


def test_per_axis_multiple_draws_any_frame_count_and_even_height_width() -> None:
    sizes = _recorded_forward_sizes(PatchVideoDenoiser())
    valid = [s for s in sizes if len(s) == 3]
    assert valid and all(h % 2 == 0 and w % 2 == 0 for _, h, w in valid), valid
    assert any(t % 2 for t, _, _ in valid), f"no odd frame count drawn: {valid}"


def test_int_multiple_draws_are_unchanged_by_the_per_axis_form() -> None:
    # The int declaration gives the seeded sizes of its all-axes tuple, axis by axis.
    a, b = TinyDenoiser(), TinyDenoiser()
    b.size_multiple = (2, 2)
    assert _recorded_forward_sizes(a) == _recorded_forward_sizes(b)


class DeclarationOnlyDenoiser(Denoiser):
    """Only the declarations; these tests never run it."""

    supported_layouts = tuple(LAYOUTS)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        raise AssertionError("a declaration test ran forward")


def test_spatial_multiples_for_either_declaration() -> None:
    den = TinyDenoiser()
    assert den.size_multiple == 2 and isinstance(den.size_multiple, int)
    assert den.spatial_multiples() == (2, 2) and den.spatial_multiples("CL") == (2,)
    video = PatchVideoDenoiser()
    assert video.size_multiple == (1, 2, 2) and video.spatial_multiples() == (1, 2, 2)
    assert video.spatial_multiples("CDHW") == (1, 2, 2)
    with pytest.raises(ShapeError, match=r"one factor per spatial axis \(2\), got 3"):
        video.spatial_multiples("CHW")
    listed = DeclarationOnlyDenoiser(in_channels=2, out_channels=2, layouts=("CHW",), size_multiple=[4, 1])
    assert listed.size_multiple == (4, 1) and listed.spatial_multiples() == (4, 1)
    mixed = DeclarationOnlyDenoiser(in_channels=2, out_channels=2, layouts=("CHW", "CTHW"), size_multiple=2)
    assert mixed.spatial_multiples("CTHW") == (2, 2, 2)
    with pytest.raises(ShapeError, match="pass layout= to pick one"):
        mixed.spatial_multiples()


@pytest.mark.parametrize(
    ("layouts", "multiple", "error", "match"),
    [
        (("CTHW",), (2, 2), ShapeError, r"one factor per spatial axis \(3\), got 2: \(2, 2\)"),
        (("CHW",), (1, 2, 2), ShapeError, r"one factor per spatial axis \(2\), got 3"),
        (("CTHW",), (1, 0, 2), ValueError, r"size_multiple\[1\] must be a positive int, got 0"),
        (("CTHW",), (1, -2, 2), ValueError, r"size_multiple\[1\] must be a positive int, got -2"),
        (("CTHW",), (1, 2.0, 2), ValueError, r"size_multiple\[1\] must be a positive int, got float"),
        (("CHW",), 0, ValueError, r"size_multiple must be a positive int, got 0"),
        (("CHW",), True, ValueError, r"size_multiple must be a positive int, got True"),
        (("CHW", "CTHW"), (2, 2), ShapeError, r"layouts of one spatial rank"),
    ],
)
def test_bad_size_multiple_declarations_are_refused(layouts: tuple[str, ...], multiple: Any,
                                                     error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DeclarationOnlyDenoiser(in_channels=2, out_channels=2, layouts=layouts, size_multiple=multiple)


def test_per_axis_multiple_is_enforced_on_forward() -> None:
    den = PatchVideoDenoiser(in_channels=2, crossattn_dim=None, vector_dim=None).eval()
    with torch.no_grad():
        assert den(torch.randn(1, 2, 3, 4, 6), torch.ones(1)).shape == (1, 2, 3, 4, 6)
        with pytest.raises(ShapeError, match=r"\(3, 5, 6\) must be divisible by \(1, 2, 2\)"):
            den(torch.randn(1, 2, 3, 5, 6), torch.ones(1))


def test_per_axis_multiple_samples_an_odd_frame_count() -> None:
    from latentkit import LatentDiffusion

    ae = latentkit.create("autoencoder", "identity", channels=2, layout="CTHW")
    den = PatchVideoDenoiser(in_channels=2, crossattn_dim=None, vector_dim=None)
    model = LatentDiffusion(ae, den)
    out = model.sample(2, steps=2, seed=0, latent_size=(3, 4, 2))
    assert out.shape == (2, 2, 3, 4, 2) and bool(torch.isfinite(out).all())
    with pytest.raises(ShapeError, match="divisible by"):
        model.sample(1, steps=2, seed=0, latent_size=(3, 3, 2))


def test_kind_runner_raises_naming_every_failed_check() -> None:
    with pytest.raises(ConformanceError) as info:
        check_denoiser(UncheckedDenoiser())
    text = str(info.value)
    for name in ("check_denoiser_wrong_channels", "check_denoiser_wrong_rank",
                 "check_denoiser_conditioning_widths"):
        assert name in text
    assert "check_denoiser_output_shapes" not in text
    check_denoiser(TinyDenoiser())  # no error
    with pytest.raises(ConformanceError, match="is a sampler, not a denoiser"):
        check_denoiser(EulerSampler())  # type: ignore[arg-type]


def test_wrong_channels_message_names_check_and_found_shape() -> None:
    checks = dict(iter_checks(UncheckedDenoiser()))
    with pytest.raises(ConformanceError) as info:
        checks["check_denoiser_wrong_channels"](UncheckedDenoiser())
    assert "wrong channel count raises ShapeError" in str(info.value)
    assert "RuntimeError" in str(info.value)  # what the broken denoiser raised instead


def test_checks_do_not_modify_the_component() -> None:
    den = TinyDenoiser()
    den.train()
    before = {k: v.clone() for k, v in den.state_dict().items()}
    check_denoiser(den)
    assert den.training and all(m.training for m in den.modules())
    assert all(torch.equal(before[k], v) for k, v in den.state_dict().items())
    ae = TinyAutoencoder().eval()
    check_autoencoder(ae)
    assert not ae.training and float(ae.scaling_factor) == 0.5 and float(ae.shift_factor) == 0.0
    cond = TinyLabelConditioner(dropout=0.1)
    check_conditioner(cond)
    assert cond.dropout == 0.1


def test_iter_checks_picks_by_kind_and_rejects_other_objects() -> None:
    names = [n for n, _ in iter_checks(EulerSampler())]
    assert names and all(n.startswith("check_sampler_") for n in names)
    assert {"check_sampler_model_calls", "check_sampler_callback", "check_sampler_gaussian_moments"} <= set(names)
    with pytest.raises(TypeError, match="not a latentkit component"):
        iter_checks(nn.Linear(2, 2))


# =========================================================================== run_checks & ids


def _info(kind: str, name: str, factory: Any, **tiny: Any) -> ComponentInfo:
    return ComponentInfo(kind=kind, name=name, summary="", plugin="tests", distribution=None,
                         version=None, factory=factory, tiny_config=tiny)


def test_run_checks_builds_one_instance_per_layout_and_reports_results() -> None:
    results = run_checks([_info("denoiser", "tiny", TinyDenoiser, in_channels=2, crossattn_dim=None)])
    assert all(isinstance(r, CheckResult) for r in results)
    assert {r.layout for r in results} == {"CL", "CHW"}
    per_layout = [r for r in results if r.layout == "CL"]
    assert [r.check for r in per_layout] == [n for n, _ in iter_checks(TinyDenoiser())]
    assert all(r.passed and r.kind == "denoiser" and r.component == "tiny" for r in results), [
        r.message for r in results if not r.passed
    ]


def test_run_checks_recreates_from_the_factory_to_catch_state_outside_state_dict() -> None:
    results = run_checks([_info("denoiser", "hidden", HiddenStateDenoiser)])
    failed = {(r.layout, r.check) for r in results if not r.passed}
    assert failed == {("CL", "check_denoiser_state_dict_round_trip"), ("CHW", "check_denoiser_state_dict_round_trip")}


def test_run_checks_reports_a_creation_failure_as_a_failed_create_check() -> None:
    def broken_factory(**config: Any) -> Any:
        raise RuntimeError("no weights here")

    results = run_checks([_info("sampler", "broken", broken_factory, steps=3),
                          _info("sampler", "euler", EulerSampler),
                          _info("dataset", "ignored", dict)])
    broken = [r for r in results if r.component == "broken"]
    assert len(broken) == 1 and broken[0].check == "create" and not broken[0].passed
    assert "no weights here" in broken[0].message and "tiny_config" in broken[0].message
    assert all(r.passed for r in results if r.component == "euler")
    assert not any(r.component == "ignored" for r in results)


def test_declared_expected_failures_are_reported_not_raised() -> None:
    class Declared(WrongVarianceSampler):
        conformance_xfail: ClassVar[dict[str, str]] = {
            "check_sampler_gaussian_moments": "too much noise on purpose"
        }

    check_sampler(Declared())  # does not raise
    results = {r.check: r for r in run_checks([_info("sampler", "declared", Declared)])}
    moments = results["check_sampler_gaussian_moments"]
    assert moments.passed and "too much noise on purpose" in moments.message
    mark = parametrize_with_checks([Declared()])
    xfails = [p for p in mark.args[1] if p.marks]
    assert [p.id for p in xfails] == ["sampler:Declared:check_sampler_gaussian_moments"]


def test_parametrize_ids_name_kind_component_layout_and_check() -> None:
    mark = parametrize_with_checks([
        _info("denoiser", "tiny", TinyDenoiser, in_channels=2, crossattn_dim=None),
        ("autoencoder", "identity"),
        EulerSampler(),
    ])
    assert mark.args[0] == ("component", "check")
    ids = [p.id for p in mark.args[1]]
    assert "denoiser:tiny[CHW]:check_denoiser_batch_independence" in ids
    assert "denoiser:tiny[CL]:check_denoiser_batch_independence" in ids
    assert "autoencoder:identity[CTHW]:check_autoencoder_output_shapes" in ids
    assert "sampler:EulerSampler:check_sampler_model_calls" in ids
    assert len(ids) == len(set(ids))


def test_lazy_combination_exports_fail_cleanly_or_resolve() -> None:
    import importlib.util

    import latentkit.testing as kit
    import latentkit.testing.strategies as strategies

    if importlib.util.find_spec("latentkit.testing.combinations") is None:
        with pytest.raises(ModuleNotFoundError):
            kit.compositions  # noqa: B018
    else:
        assert callable(kit.compositions) and callable(kit.check_composition)
        assert strategies.compositions is kit.compositions
    with pytest.raises(AttributeError):
        kit.no_such_name  # noqa: B018


# =========================================================================== not applicable


def test_not_applicable_is_recorded_as_skipped_not_passed() -> None:
    results = {r.check: r for r in run_checks([_info("sampler", "ancestral", EulerAncestralSampler),
                                                _info("conditioner", "mask", TinyMaskConditioner)])}
    for name, reason in (("check_sampler_ode_solution", "stochastic sampler"),
                         ("check_sampler_order", "stochastic sampler"),
                         ("check_conditioner_gradients", "not trainable")):
        r = results[name]
        assert r.skipped and not r.passed and not r.failed and r.outcome == "skipped", r
        assert reason in r.message
    moments = results["check_sampler_gaussian_moments"]
    assert moments.passed and not moments.skipped and moments.outcome == "passed"
    with pytest.raises(ValueError, match="a skipped check has not passed"):
        CheckResult("sampler", "x", "check_sampler_order", True, skipped=True)


def test_kind_runners_do_not_fail_on_checks_that_do_not_apply() -> None:
    gradients = dict(iter_checks(TinyMaskConditioner()))["check_conditioner_gradients"]
    with pytest.raises(NotApplicable, match="not trainable"):
        gradients(TinyMaskConditioner())
    check_conditioner(TinyMaskConditioner())  # no error
    check_sampler(EulerAncestralSampler())  # ode_solution and order do not apply: no error


def test_parametrize_turns_not_applicable_into_a_pytest_skip() -> None:
    mark = parametrize_with_checks([EulerAncestralSampler()])
    params = {p.id: p.values for p in mark.args[1]}
    component, check = params["sampler:EulerAncestralSampler:check_sampler_ode_solution"]
    with pytest.raises(pytest.skip.Exception, match="check_sampler_ode_solution does not apply: stochastic"):
        check(component)
    component, check = params["sampler:EulerAncestralSampler:check_sampler_gaussian_moments"]
    check(component)  # applies, passes
    assert check.__name__ == "check_sampler_gaussian_moments" and "contract" in vars(check)


def test_cli_check_prints_skips_with_their_reasons_and_counts_them() -> None:
    import io

    from latentkit.cli import main

    out = io.StringIO()
    assert main(["check", "sampler:euler_ancestral"], out=out) == 0
    text = out.getvalue()
    rows = [line.split() for line in text.splitlines() if line.startswith("sampler ")]
    outcome = {row[3]: row[4] for row in rows}
    assert outcome["check_sampler_ode_solution"] == "SKIP" and outcome["check_sampler_order"] == "SKIP"
    assert outcome["check_sampler_gaussian_moments"] == "PASS"
    assert "SKIP sampler:euler_ancestral [-] check_sampler_order: stochastic sampler" in text
    passed = sum(v == "PASS" for v in outcome.values())
    assert f"\n{passed} passed, 2 skipped, 0 failed" in text


# =========================================================================== order and final step


def test_order_check_reports_the_observed_orders_and_passes_faster_convergence_with_a_note() -> None:
    with pytest.raises(ConformanceError) as info:
        dict(iter_checks(WrongWeightsHeunSampler()))["check_sampler_order"](WrongWeightsHeunSampler())
    found = str(info.value).split("found: ")[1]
    observed = [float(v) for v in found.split("observed ")[1].split(" from")[0].split(", ")]
    assert found.startswith("declared order 2") and all(0.9 < o < 1.1 for o in observed), found
    conservative = HeunSampler()
    conservative.order = 1
    note = dict(iter_checks(conservative))["check_sampler_order"](conservative)
    assert note and "above the declared 1" in note
    assert dict(iter_checks(HeunSampler()))["check_sampler_order"](HeunSampler()) is None
    undeclared = HeunSampler()
    undeclared.order = None
    with pytest.raises(NotApplicable, match="no order declared"):
        dict(iter_checks(undeclared))["check_sampler_order"](undeclared)


@pytest.mark.parametrize("order", [0, 2.0, True, "2"])
def test_an_invalid_order_declaration_fails_the_declarations_check(order: Any) -> None:
    sampler = EulerSampler()
    sampler.order = order  # type: ignore[assignment]
    with pytest.raises(ConformanceError, match="order must be None"):
        dict(iter_checks(sampler))["check_sampler_declarations"](sampler)


@pytest.mark.parametrize("make", [StopsAtSigmaMinSampler, StopsAtSigmaMinAncestralSampler])
def test_stopping_at_sigma_min_is_named_in_the_final_step_message(make: Callable[[], Sampler]) -> None:
    with pytest.raises(ConformanceError, match="does not take the final step from sigma_min to 0"):
        dict(iter_checks(make()))["check_sampler_final_step"](make())
    # ... and nothing else sees it: at the kit's usual data width the residual is 0.1 % of the std.
    assert "check_sampler_ode_solution" not in _failures(make())


def test_registered_identity_autoencoder_passes() -> None:
    ae = latentkit.create("autoencoder", "identity", channels=2, layout="CTHW")
    check_autoencoder(ae)


def test_docs_list_every_check() -> None:
    from pathlib import Path

    from latentkit.testing.checks import _CHECKS, CHECKED_KINDS

    docs = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
    if not docs.exists():
        pytest.skip("docs/ not shipped with this copy")
    text = docs.read_text()
    missing = [name for kind in CHECKED_KINDS for name, _ in _CHECKS[kind] if f"`{name}`" not in text]
    assert not missing, f"docs/testing.md does not describe {missing}"
