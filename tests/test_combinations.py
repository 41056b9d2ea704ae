"""Property tests across combinations of registered components (issue 3, "Must show")."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

from conftest import TinyDenoiser
from latentkit import hookimpl
from latentkit.errors import UnknownComponentError
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


def _draws(strategy: Any, n: int) -> list[Composition]:
    drawn: list[Composition] = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(composition: Composition) -> None:
        drawn.append(composition)

    collect()
    return drawn


def _parts(c: Composition) -> set[tuple[str, str]]:
    parts = {("autoencoder", c.autoencoder), ("denoiser", c.denoiser), ("schedule", c.schedule),
             ("sampler", c.sampler)}
    return parts | ({("conditioner", c.conditioner)} if c.conditioner else set())


def test_include_one_built_in_denoiser_draws_distinct_combinations_that_contain_it() -> None:
    drawn = _draws(compositions(include=["unet"]), 60)
    assert len(drawn) == 60
    assert all(c.denoiser == "unet" for c in drawn), {c.denoiser for c in drawn}
    assert len({repr(c) for c in drawn}) == len(drawn), "a combination was drawn twice"
    assert {c.mismatch is None for c in drawn} == {True, False}  # fitting and broken ones
    assert len({c.autoencoder for c in drawn}) > 1 and len({c.sampler for c in drawn}) > 1


def test_include_several_draws_combinations_with_at_least_one_of_them(manager: PluginManager) -> None:
    include = ["sampler:heun", "tiny_conv", ("conditioner", "class_label")]
    wanted = {("sampler", "heun"), ("denoiser", "tiny_conv"), ("conditioner", "class_label")}
    drawn = _draws(compositions(manager=manager, include=include, compatible=True), 80)
    assert all(_parts(c) & wanted for c in drawn)
    assert len({repr(c) for c in drawn}) == len(drawn), "a combination was drawn twice"
    for part in wanted:  # each named part is tried with other parts
        assert any(part in _parts(c) and len(_parts(c) & wanted) == 1 for c in drawn), part
    assert all(c.mismatch is None for c in drawn)


def test_include_refuses_what_no_combination_can_contain(manager: PluginManager) -> None:
    with pytest.raises(UnknownComponentError, match="no_such_part"):
        compositions(manager=manager, include=["no_such_part"])
    with pytest.raises(UnknownComponentError):
        compositions(manager=manager, include=["sampler:no_such_sampler"])
    with pytest.raises(ValueError, match="not part of a combination"):
        compositions(manager=manager, include=[("dataset", "digits")])
    with pytest.raises(ValueError, match="at least one"):
        compositions(manager=manager, include=[])


def test_run_combinations_with_include_checks_distinct_combinations_with_it() -> None:
    results = run_combinations(max_examples=3, include=["denoiser:unet"])
    assert 1 <= len(results) <= 3
    assert all(" + unet + " in r.component for r in results), [r.component for r in results]
    assert len({r.component for r in results}) == len(results)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]


def test_cli_combinations_takes_names_as_check_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import latentkit.testing.combinations as combinations
    from latentkit.cli import main

    calls: list[Any] = []

    def fake(max_examples: int = 20, include: Any = None) -> list[CheckResult]:
        calls.append((max_examples, include))
        return [CheckResult("combination", "identity + unet + no conditioner | edm, eps, euler",
                            "check_composition", True)]

    monkeypatch.setattr(combinations, "run_combinations", fake)
    out = io.StringIO()
    assert main(["check", "--combinations", "unet", "sampler:heun", "--max-examples", "4"], out=out) == 0
    assert calls[-1] == (4, [("denoiser", "unet"), ("sampler", "heun")])
    assert "1 passed, 0 skipped, 0 failed" in out.getvalue()  # no per-component checks
    assert main(["check", "--combinations"], out=io.StringIO()) == 0
    assert calls[-1] == (20, None)


def test_cli_combinations_reports_an_unknown_name_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from latentkit.cli import main

    assert main(["check", "--combinations", "no_such_part"]) == 2
    assert "no component named 'no_such_part'" in capsys.readouterr().err
