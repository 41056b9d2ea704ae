"""Built-in schedules, registered through ``latentkit_register_schedules``.

* discrete variance-preserving: ``linear``, ``scaled_linear``, ``cosine``
  (:mod:`latentkit.schedules.discrete`), each with ``rescale_zero_terminal_snr``;
* continuous: ``edm`` (:mod:`latentkit.schedules.edm`);
* flow matching: ``flow`` (:mod:`latentkit.schedules.flow`), with SD3's constant and Flux's
  dynamic shift.

The spacing functions shared by all of them live in :mod:`latentkit.schedules.spacing`.
"""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar


@hookimpl
def latentkit_register_schedules(registry: Registrar) -> None:
    """Register the built-in schedules."""
    registry.add(
        "linear",
        "latentkit.schedules.discrete:LinearSchedule",
        summary="DDPM linear betas 1e-4..0.02 (Ho et al. 2020), variance preserving",
        tiny_config={"num_train_timesteps": 100},
    )
    registry.add(
        "scaled_linear",
        "latentkit.schedules.discrete:ScaledLinearSchedule",
        summary="Stable Diffusion betas, linear in sqrt(beta) 0.00085..0.012 (Rombach et al. 2022)",
        tiny_config={"num_train_timesteps": 100},
    )
    registry.add(
        "cosine",
        "latentkit.schedules.discrete:CosineSchedule",
        summary="Cosine alpha_bar (Nichol & Dhariwal 2021, Eq. 17), variance preserving",
        tiny_config={"num_train_timesteps": 100},
    )
    registry.add(
        "edm",
        "latentkit.schedules.edm:EDMSchedule",
        summary="EDM continuous sigmas: Karras grid, log-normal training (Karras et al. 2022)",
        tiny_config={},
    )
    registry.add(
        "flow",
        "latentkit.schedules.flow:FlowSchedule",
        summary="Flow matching t = sigma/(1+sigma): SD3 constant / Flux dynamic shift, "
        "logit-normal, mode, cosmap training t (Esser et al. 2024)",
        tiny_config={},
    )
