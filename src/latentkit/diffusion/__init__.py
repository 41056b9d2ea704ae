"""The diffusion core: parameterizations, the training objective, guidance and the composed
:class:`LatentDiffusion` model.

* :mod:`~latentkit.diffusion.parameterizations`: ``eps``, ``v``, ``x0``, ``edm``, the flow
  matching ``flow`` and ``flow_x0``, and
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
from latentkit.diffusion.model import LatentDiffusion, SamplingProblem, downsample_mask
from latentkit.diffusion.objective import (
    LOSS_WEIGHTINGS,
    CosmapWeighting,
    DiffusionObjective,
    EDMWeighting,
    LossWeighting,
    MinSNRWeighting,
    SigmaSqrtWeighting,
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
    FlowParameterization,
    FlowX0Parameterization,
    Parameterization,
    ParameterizedDenoiser,
    VParameterization,
    X0Parameterization,
    get_parameterization,
    parameterizations_for,
)
from latentkit.diffusion.sampling import SamplingOptions, schedule_sigmas

__all__ = [
    "LOSS_WEIGHTINGS",
    "PARAMETERIZATIONS",
    "ClassifierFreeGuidance",
    "CosmapWeighting",
    "DiffusionObjective",
    "DynamicThresholding",
    "EDMParameterization",
    "EDMWeighting",
    "EpsParameterization",
    "FlowParameterization",
    "FlowX0Parameterization",
    "LatentDiffusion",
    "LossWeighting",
    "MinSNRWeighting",
    "Parameterization",
    "ParameterizedDenoiser",
    "SamplingOptions",
    "SamplingProblem",
    "SigmaSqrtWeighting",
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
    "parameterizations_for",
    "rescale_guidance",
    "schedule_sigmas",
    "snr",
]
