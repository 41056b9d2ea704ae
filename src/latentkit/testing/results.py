"""The outcome of one conformance check, shared by the kit, ``latentkit check`` and the
combination checks."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["CheckResult", "ConformanceError", "NotApplicable"]


class ConformanceError(AssertionError):
    """A component broke a contract; the message names the check and the contract."""


class NotApplicable(Exception):
    """Raised by a check that does not apply to the component it was given, with the reason
    (for instance ``NotApplicable("no trainable parameters")``).

    Not applicable is not a pass: :func:`~latentkit.testing.run_checks` records it as a
    skipped :class:`CheckResult`, ``latentkit check`` prints ``SKIP`` and the reason,
    :func:`~latentkit.testing.parametrize_with_checks` turns it into ``pytest.skip(reason)``,
    and ``check_autoencoder(...)`` & co. do not fail on it.
    """


Outcome = Literal["passed", "skipped", "failed"]


def _not_passed_and_skipped(instance: CheckResult, attribute: Any, value: bool) -> None:
    if value and instance.passed:
        raise ValueError(f"CheckResult for {instance.check}: a skipped check has not passed (passed=True, skipped=True)")


@attrs.frozen
class CheckResult:
    """One check run on one component (or one combination of components).

    Three outcomes: passed (``passed``), skipped (``skipped``: the check did not apply, the
    reason is in ``message``; ``passed`` is False) and failed (neither, see :attr:`failed`).
    """

    kind: str  # component kind, or "combination"
    component: str  # component name (or a description of the combination)
    check: str  # name of the check function, e.g. "check_denoiser_batch_independence"
    passed: bool
    message: str = ""  # the error for a failure, the reason for a skip, an optional note for a pass
    layout: str | None = None  # the layout the check ran in, where it matters
    skipped: bool = attrs.field(default=False, validator=_not_passed_and_skipped)  # did not apply

    @property
    def failed(self) -> bool:
        """Whether the check ran and found a broken contract."""
        return not self.passed and not self.skipped

    @property
    def outcome(self) -> Outcome:
        """``"passed"``, ``"skipped"`` or ``"failed"``."""
        return "passed" if self.passed else "skipped" if self.skipped else "failed"
