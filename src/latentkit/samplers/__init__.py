"""Built-in samplers, registered through ``latentkit_register_samplers``.

Every sampler works in sigma space on ``denoise(x, sigma, **extra_args) -> x0`` with one
signature (:class:`latentkit.interfaces.Sampler`); see ``docs/samplers.md`` for the table of
algorithms, orders and model calls per step.
"""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar

#: name -> (factory, summary). Factories are "module:attr" strings, imported on first use.
BUILTIN_SAMPLERS: dict[str, tuple[str, str]] = {
    "ddpm": ("classic:DDPMSampler", "DDPM ancestral sampling (Ho et al. 2020)"),
    "ddim": ("classic:DDIMSampler", "DDIM, eta=0 deterministic (Song et al. 2021)"),
    "plms": ("classic:PLMSSampler", "Pseudo linear multistep (Liu et al. 2022)"),
    "euler": ("euler:EulerSampler", "Euler on the PF ODE (Karras et al. 2022)"),
    "euler_ancestral": ("euler:EulerAncestralSampler", "Euler ancestral (k-diffusion)"),
    "euler_ancestral_rf": (
        "euler:EulerAncestralRFSampler", "Euler ancestral for rectified flow (down-step linear in t)",
    ),
    "heun": ("euler:HeunSampler", "Heun 2nd order (Karras et al. 2022, Alg. 2)"),
    "dpm2": ("euler:DPM2Sampler", "DPM-Solver-2 (Lu et al. 2022)"),
    "dpm2_ancestral": ("euler:DPM2AncestralSampler", "DPM-Solver-2 ancestral (k-diffusion)"),
    "lms": ("euler:LMSSampler", "Linear multistep, order 4 (k-diffusion)"),
    "dpmpp_2s_ancestral": ("dpmpp:DPMpp2SAncestralSampler", "DPM-Solver++(2S) ancestral (Lu et al. 2022)"),
    "dpmpp_2m": ("dpmpp:DPMpp2MSampler", "DPM-Solver++(2M) (Lu et al. 2022)"),
    "dpmpp_3m": ("dpmpp:DPMpp3MSampler", "DPM-Solver++(3M) multistep, deterministic (Lu et al. 2022)"),
    "dpmpp_sde": ("dpmpp:DPMppSDESampler", "DPM-Solver++ SDE, Brownian-tree noise (Lu et al. 2022)"),
    "dpmpp_2m_sde": ("dpmpp:DPMpp2MSDESampler", "DPM-Solver++(2M) SDE (Lu et al. 2022)"),
    "dpmpp_3m_sde": ("dpmpp:DPMpp3MSDESampler", "DPM-Solver++(3M) SDE (Lu et al. 2022)"),
    "unipc": ("unipc:UniPCSampler", "UniPC predictor-corrector, bh2 (Zhao et al. 2023)"),
    "deis": ("deis:DEISSampler", "DEIS tAB multistep exponential integrator (Zhang & Chen 2023)"),
    "ipndm": ("deis:IPNDMSampler", "Improved PNDM, fixed-weight Adams-Bashforth (Zhang & Chen 2023)"),
    "ipndm_v": ("deis:IPNDMVSampler", "Variable-step iPNDM / Adams-Bashforth (Zhang & Chen 2023)"),
    "lcm": ("classic:LCMSampler", "Multistep latent-consistency sampling (Luo et al. 2023)"),
}


@hookimpl
def latentkit_register_samplers(registry: Registrar) -> None:
    """Register the built-in samplers."""
    for name, (factory, summary) in BUILTIN_SAMPLERS.items():
        registry.add(name, f"latentkit.samplers.{factory}", summary=summary, tiny_config={})
