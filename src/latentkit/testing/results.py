"""The outcome of one conformance check, shared by the kit, ``latentkit check`` and the
combination checks."""

from __future__ import annotations

import attrs

__all__ = ["CheckResult", "ConformanceError"]


class ConformanceError(AssertionError):
    """A component broke a contract; the message names the check and the contract."""


@attrs.frozen
class CheckResult:
    """One check run on one component (or one combination of components)."""

    kind: str  # component kind, or "combination"
    component: str  # component name (or a description of the combination)
    check: str  # name of the check function, e.g. "check_denoiser_batch_independence"
    passed: bool
    message: str = ""  # the error for a failure, empty for a pass
    layout: str | None = None  # the layout the check ran in, where it matters
