"""Property tests across combinations of registered components (issue 3, "Must show")."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from conftest import TinyDenoiser
from latentkit import hookimpl
from latentkit.plugins import PluginManager
from latentkit.specs import Conditioning
from latentkit.testing.combinations import (
    Composition,
    check_composition,
    compositions,
    run_combinations,
)
from latentkit.testing.results import CheckResult, ConformanceError

pytestmark = pytest.mark.usefixtures("single_thread")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compositions())
def test_registered_components_compose(composition: Composition) -> None:
    """Every compatible draw trains a step and samples with guidance; every incompatible one
    is a CompositionError before any forward pass."""
    check_composition(composition)


class NaNDenoiser(TinyDenoiser):
    """Breaks the contract: its output is not finite."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        return super().forward(x, t, cond) * float("nan")


class TinyPlugin:
    """A third-party plugin: two denoisers that run on every layout."""

    @hookimpl
    def latentkit_register_denoisers(self, registry: Any) -> None:
        registry.add("tiny_conv", TinyDenoiser, summary="two convolutions", tiny_config={"hidden": 8})
        registry.add("nan_conv", NaNDenoiser, summary="broken on purpose", tiny_config={"hidden": 8})


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(TinyPlugin(), "tiny-plugin")
    return pm


def _composition(manager: PluginManager, **overrides: Any) -> Composition:
    fields: dict[str, Any] = {
        "autoencoder": "identity", "autoencoder_config": {"channels": 2, "layout": "CL"},
        "denoiser": "tiny_conv", "denoiser_config": {"hidden": 8},
        "conditioner": "class_label", "conditioner_config": manager.get("conditioner", "class_label").tiny_config,
        "schedule": "linear", "schedule_config": {"num_train_timesteps": 100},
        "parameterization": "v", "sampler": "heun", "sampler_config": {}, "manager": manager,
    }
    return Composition(**{**fields, **overrides})


def test_a_plugin_denoiser_composes_in_1d_and_its_mismatches_are_caught(manager: PluginManager) -> None:
    check_composition(_composition(manager))
    for mismatch in ("in_channels", "out_channels", "crossattn_dim", "vector_dim", "layout"):
        built = _composition(manager, mismatch=mismatch).build()
        assert not built.compatible
        check_composition(built)  # passes: CompositionError before any forward pass


def test_the_strategy_draws_installed_components(manager: PluginManager) -> None:
    names: set[str] = set()

    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(compositions(manager=manager, compatible=True))
    def collect(composition: Composition) -> None:
        names.add(composition.denoiser)

    collect()
    assert {"tiny_conv", "nan_conv"} <= names


def test_a_broken_component_fails_the_check(manager: PluginManager) -> None:
    with pytest.raises(ConformanceError, match=r"nan_conv.*not finite"):
        check_composition(_composition(manager, denoiser="nan_conv"))


def test_run_combinations_reports_results() -> None:
    results = run_combinations(max_examples=3)
    assert 1 <= len(results) <= 3
    assert all(isinstance(r, CheckResult) and r.kind == "combination" for r in results)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
