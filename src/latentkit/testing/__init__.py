"""latentkit's conformance kit, for the built-ins and for plugin authors.

One decorator checks a component against every contract of its kind::

    from latentkit.testing import parametrize_with_checks

    @parametrize_with_checks([MyDenoiser(in_channels=4, out_channels=4)])
    def test_my_denoiser(component, check):
        check(component)

See ``docs/testing.md``. Hypothesis strategies live in :mod:`latentkit.testing.strategies`;
closed-form Gaussian data for sampler tests in :class:`GaussianData`. A check that does not
apply to a component raises :class:`NotApplicable` (reported as skipped, never as passed).
Tiny Stable Diffusion configs and random single-file checkpoints live in
:mod:`latentkit.testing.stable_diffusion` (imported on its own).
"""

from __future__ import annotations

from typing import Any

from latentkit.testing.checks import (
    CHECKED_KINDS,
    check_autoencoder,
    check_conditioner,
    check_denoiser,
    check_sampler,
    check_schedule,
    component_kind,
    declared_xfail,
    iter_checks,
    karras_sigmas,
    parametrize_with_checks,
    random_conditioning,
    run_checks,
)
from latentkit.testing.gaussian import GaussianData
from latentkit.testing.results import CheckResult, ConformanceError, NotApplicable

__all__ = [
    "CHECKED_KINDS",
    "CheckResult",
    "ConformanceError",
    "GaussianData",
    "NotApplicable",
    "check_autoencoder",
    "check_composition",
    "check_conditioner",
    "check_denoiser",
    "check_sampler",
    "check_schedule",
    "component_kind",
    "compositions",
    "declared_xfail",
    "iter_checks",
    "karras_sigmas",
    "parametrize_with_checks",
    "random_conditioning",
    "run_checks",
]

_LAZY = {"compositions", "check_composition"}


def __getattr__(name: str) -> Any:
    # The combination checks live in their own module (and pull in hypothesis); import them
    # on first use only.
    if name in _LAZY:
        from latentkit.testing import combinations

        return getattr(combinations, name)
    raise AttributeError(f"module 'latentkit.testing' has no attribute {name!r}")
