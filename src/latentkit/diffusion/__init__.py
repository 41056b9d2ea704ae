"""The diffusion core: parameterizations, the training objective, guidance and the composed
:class:`LatentDiffusion` model.

* :mod:`~latentkit.diffusion.parameterizations`: ``eps``, ``v``, ``x0``, ``edm`` and
  :class:`ParameterizedDenoiser` (``denoise(x, sigma, cond) -> x0``, what samplers see);
* :mod:`~latentkit.diffusion.objective`: per-sample loss, weightings, offset noise;
* :mod:`~latentkit.diffusion.guidance`: classifier-free guidance (one batched call), guidance
  rescale, guidance interval, dynamic thresholding;
* :mod:`~latentkit.diffusion.sampling`: :class:`SamplingOptions`, the frozen, validated
  sampling options (sampler, steps, guidance, seed, latent size, ...) that
  ``LatentDiffusion.sample``, ``img2img``, ``inpaint`` and ``super_resolve`` take (as an
  object and/or as keywords);
* :mod:`~latentkit.diffusion.model`: :class:`LatentDiffusion`.
"""

from __future__ import annotations

from latentkit.diffusion.guidance import (
    ClassifierFreeGuidance,
    DynamicThresholding,
    classifier_free_guidance,
    dynamic_threshold,
    rescale_guidance,
)
from latentkit.diffusion.model import LatentDiffusion, downsample_mask
from latentkit.diffusion.objective import (
    LOSS_WEIGHTINGS,
    DiffusionObjective,
    EDMWeighting,
    LossWeighting,
    MinSNRWeighting,
    SoftMinSNRWeighting,
    UniformWeighting,
    get_loss_weighting,
    offset_noise,
    snr,
)
from latentkit.diffusion.parameterizations import (
    PARAMETERIZATIONS,
    EDMParameterization,
    EpsParameterization,
    Parameterization,
    ParameterizedDenoiser,
    VParameterization,
    X0Parameterization,
    get_parameterization,
)
from latentkit.diffusion.sampling import SamplingOptions

__all__ = [
    "LOSS_WEIGHTINGS",
    "PARAMETERIZATIONS",
    "ClassifierFreeGuidance",
    "DiffusionObjective",
    "DynamicThresholding",
    "EDMParameterization",
    "EDMWeighting",
    "EpsParameterization",
    "LatentDiffusion",
    "LossWeighting",
    "MinSNRWeighting",
    "Parameterization",
    "ParameterizedDenoiser",
    "SamplingOptions",
    "SoftMinSNRWeighting",
    "UniformWeighting",
    "VParameterization",
    "X0Parameterization",
    "classifier_free_guidance",
    "downsample_mask",
    "dynamic_threshold",
    "get_loss_weighting",
    "get_parameterization",
    "offset_noise",
    "rescale_guidance",
    "snr",
]
