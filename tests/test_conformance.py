"""The conformance kit over every registered component, built-in or installed.

One test item per (component, layout, check), parametrized over ``list_components()``: a
component registered later, by latentkit or by an installed plugin, is checked the moment it
is registered, from its ``tiny_config``. A component that fails to build shows up as a failed
``create`` item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import latentkit
from latentkit.testing import CHECKED_KINDS, iter_checks, parametrize_with_checks

REGISTERED = [info for info in latentkit.list_components() if info.kind in CHECKED_KINDS]
CHECKS = parametrize_with_checks(REGISTERED)


@CHECKS
def test_registered_component_conforms(component: Any, check: Callable[[Any], Any]) -> None:
    check(component)


def test_every_registered_component_is_parametrized() -> None:
    labelled = {":".join(p.id.split(":")[:2]).split("[")[0] for p in CHECKS.args[1]}
    assert {f"{i.kind}:{i.name}" for i in REGISTERED} <= labelled


# The registered tiny configs of samplers with optional noise are stochastic, so there the
# order check does not apply; with the noise switched off each declared order is measured.
DETERMINISTIC_SAMPLERS = [
    ("euler", {}), ("heun", {}), ("dpm2", {}), ("ddim", {}), ("plms", {}), ("dpmpp_2m", {}),
    ("lms", {}), ("lms", {"order": 1}), ("lms", {"order": 2}), ("lms", {"order": 3}),
    ("unipc", {}), ("unipc", {"use_corrector": False}), ("unipc", {"order": 1}),
    ("unipc", {"order": 1, "use_corrector": False}), ("unipc", {"order": 3}),
    ("unipc", {"order": 3, "use_corrector": False}), ("unipc", {"variant": "bh1"}),
    ("euler_ancestral", {"eta": 0.0}), ("euler_ancestral_rf", {"eta": 0.0}), ("dpm2_ancestral", {"eta": 0.0}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}), ("dpmpp_sde", {"eta": 0.0}), ("dpmpp_2m_sde", {"eta": 0.0}),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}), ("dpmpp_3m_sde", {"eta": 0.0}),
    # The few-step solvers and options (tests/test_fewstep_solvers.py measures their orders too).
    ("dpmpp_3m", {}), ("dpmpp_3m", {"lower_order_final": False}), ("dpmpp_3m", {"euler_at_final": True}),
    ("dpmpp_3m", {"full_third_order": True}),
    ("dpmpp_2m", {"lower_order_final": True, "euler_at_final": True}),
    ("deis", {}), ("deis", {"order": 1}), ("deis", {"order": 2}), ("deis", {"prediction": "eps"}),
    ("deis", {"prediction": "eps", "order": 2}), ("deis", {"lower_order_final": False}),
    ("ipndm", {}), ("ipndm", {"order": 1}), ("ipndm", {"order": 2}), ("ipndm", {"order": 3}),
    ("ipndm_v", {}), ("ipndm_v", {"order": 3}),
    ("unipc", {"variant": "bh1", "use_corrector": False}), ("unipc", {"variant": "bh1", "order": 1}),
    ("unipc", {"variant": "bh1", "order": 3}), ("unipc", {"variant": "bh1", "order": 3, "use_corrector": False}),
    ("unipc", {"euler_at_final": True}),
    ("dpmpp_3m", {"final_step": "denoise"}), ("deis", {"final_step": "denoise"}), ("heun", {"final_step": "denoise"}),
    ("lms", {"final_step": "denoise"}), ("plms", {"final_step": "denoise"}),
]


@pytest.mark.parametrize(("name", "config"), DETERMINISTIC_SAMPLERS,
                         ids=[f"{n}{c or ''}" for n, c in DETERMINISTIC_SAMPLERS])
def test_declared_orders_of_the_built_in_samplers_are_measured(name: str, config: dict[str, Any]) -> None:
    sampler = latentkit.create("sampler", name, **config)
    assert not sampler.stochastic and isinstance(sampler.order, int)
    checks = dict(iter_checks(sampler))
    checks["check_sampler_order"](sampler)  # raises when the observed order falls short
    checks["check_sampler_final_step"](sampler)
    checks["check_sampler_ode_solution"](sampler)


def test_only_samplers_without_an_ode_solver_leave_the_order_undeclared() -> None:
    from latentkit.samplers import BUILTIN_SAMPLERS

    undeclared = {name for name in BUILTIN_SAMPLERS if latentkit.create("sampler", name).order is None}
    assert undeclared == {"ddpm", "lcm"}  # always stochastic / consistency sampling
    measured = {name for name, _ in DETERMINISTIC_SAMPLERS}
    assert measured == set(BUILTIN_SAMPLERS) - undeclared
