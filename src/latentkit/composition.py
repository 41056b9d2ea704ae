"""Checks that an autoencoder, a denoiser and a conditioner fit together, before any forward
pass. :class:`~latentkit.LatentDiffusion` runs them at construction."""

from __future__ import annotations

from typing import Any

from latentkit.errors import CompositionError
from latentkit.interfaces import Autoencoder, Conditioner, Denoiser
from latentkit.specs import ConditioningSpec

__all__ = ["component_label", "validate_composition"]


def component_label(component: Any) -> str:
    """``"denoiser 'unet' (UNet)"`` for a registered component, else its class name."""
    kind_name = getattr(component, "latentkit_name", None)
    cls = type(component).__name__
    if kind_name:
        return f"{kind_name[0]} {kind_name[1]!r} ({cls})"
    return f"{getattr(component, 'kind', 'component')} {cls}"


def _entry_errors(den: str, cond: str, produced: ConditioningSpec, accepted: ConditioningSpec) -> list[str]:
    errors = []
    for field, what in (("crossattn_dim", "cross-attention context width"), ("vector_dim", "vector width")):
        p, a = getattr(produced, field), getattr(accepted, field)
        if p == a:
            continue
        if a is None:
            errors.append(f"{cond} produces a {what} of {p}, but {den} takes no {field.split('_')[0]} input")
        elif p is None:
            errors.append(f"{den} expects a {what} of {a}, but {cond} produces none")
        else:
            errors.append(f"{cond} produces a {what} of {p}, but {den} expects {a}")
    return errors


def validate_composition(
    autoencoder: Autoencoder,
    denoiser: Denoiser,
    conditioner: Conditioner | None = None,
) -> None:
    """Raise :class:`CompositionError` unless the parts fit:

    * the latent layout is one the denoiser runs on;
    * latent channels + the conditioner's concat channels = the denoiser's input channels;
    * the denoiser's output channels = latent channels;
    * the conditioner's cross-attention width and vector width equal what the denoiser
      accepts (an entry produced but not accepted, or expected but not produced, is an error).

    Every message names both components and both numbers; all mismatches are reported at once.
    """
    ae, den = component_label(autoencoder), component_label(denoiser)
    cond = component_label(conditioner) if conditioner is not None else "no conditioner"
    latent = autoencoder.latent_spec
    produced = conditioner.output_spec if conditioner is not None else ConditioningSpec()
    accepted = denoiser.conditioning_spec
    errors: list[str] = []
    if latent.layout not in denoiser.layouts:
        errors.append(
            f"{ae} makes {latent.layout!r} latents, but {den} runs on layouts {list(denoiser.layouts)}"
        )
    if latent.channels + produced.concat_channels != denoiser.in_channels:
        errors.append(
            f"{ae} latent channels ({latent.channels}) + {cond} concat channels "
            f"({produced.concat_channels}) = {latent.channels + produced.concat_channels}, but "
            f"{den} takes {denoiser.in_channels} input channels"
        )
    if denoiser.out_channels != latent.channels:
        errors.append(
            f"{den} outputs {denoiser.out_channels} channels, but {ae} latents have "
            f"{latent.channels} channels"
        )
    errors += _entry_errors(den, cond, produced, accepted)
    if errors:
        raise CompositionError("components do not fit:\n  - " + "\n  - ".join(errors))
