"""The conformance kit over every registered component, built-in or installed.

One test item per (component, layout, check), parametrized over ``list_components()``: a
component registered later, by latentkit or by an installed plugin, is checked the moment it
is registered, from its ``tiny_config``. A component that fails to build shows up as a failed
``create`` item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import latentkit
from latentkit.testing import CHECKED_KINDS, parametrize_with_checks

REGISTERED = [info for info in latentkit.list_components() if info.kind in CHECKED_KINDS]
CHECKS = parametrize_with_checks(REGISTERED)


@CHECKS
def test_registered_component_conforms(component: Any, check: Callable[[Any], Any]) -> None:
    check(component)


def test_every_registered_component_is_parametrized() -> None:
    labelled = {":".join(p.id.split(":")[:2]).split("[")[0] for p in CHECKS.args[1]}
    assert {f"{i.kind}:{i.name}" for i in REGISTERED} <= labelled
