"""benchmarks/fewstep_accuracy.py in --quick mode, in-process: the output's structure, the
diffusers wrapper's two checks (same grid as latentkit's sampler of the same algorithm; the
1000-step sanity row against the reference), honest call counts, strict JSON, and the
extra-schedules extension point taking part in latentkit's best."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")

# diffusers' schedulers trip numpy 2 "copy keyword" deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_SPEC = importlib.util.spec_from_file_location(
    "fewstep_accuracy", Path(__file__).resolve().parents[1] / "benchmarks" / "fewstep_accuracy.py"
)
assert _SPEC is not None and _SPEC.loader is not None
fewstep = importlib.util.module_from_spec(_SPEC)
sys.modules["fewstep_accuracy"] = fewstep  # dataclasses look their module up while the file runs
_SPEC.loader.exec_module(fewstep)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """One --quick run with an extra schedule planted: a Karras grid with rho = 3 for every
    solver, and a deliberately bad grid restricted to one solver."""
    path = tmp_path_factory.mktemp("fewstep") / "out.json"
    schedule = fewstep.make_schedule()

    def planted(budget: int, problem: Any = None) -> dict[str, torch.Tensor]:
        return {
            "karras_rho3": schedule.sigmas(budget, "karras", rho=3.0, dtype=torch.float64),
            "bad@euler": torch.tensor([schedule.sigma_max, 0.0], dtype=torch.float64),
        }

    original = fewstep.extra_schedules
    fewstep.extra_schedules = planted
    try:
        summary = fewstep.main(["--quick", "--json", str(path)])
    finally:
        fewstep.extra_schedules = original
    with open(path) as fh:
        on_disk = json.load(fh, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    return summary, on_disk


def test_structure_and_json(quick_run: tuple[dict[str, Any], dict[str, Any]]) -> None:
    summary, on_disk = quick_run
    assert summary["budgets"] == on_disk["budgets"] == list(fewstep.QUICK_BUDGETS)
    assert [row["budget"] for row in on_disk["best"]] == list(fewstep.QUICK_BUDGETS)
    for row in on_disk["best"]:
        for scope in ("all", "standard"):
            lk, df = row[scope]["latentkit"], row[scope]["diffusers"]
            assert lk["library"] == "latentkit" and df["library"] == "diffusers"
            assert lk["calls"] <= row["budget"] and df["calls"] <= row["budget"]
            assert row[scope]["ratio"] == pytest.approx(df["error"] / lk["error"])
        # the standard-grid best can only be worse than (or equal to) the best over every grid
        assert row["standard"]["latentkit"]["error"] >= row["all"]["latentkit"]["error"]
    # every registered deterministic sampler took part, the stochastic ones were skipped
    assert {"ddim", "euler", "heun", "dpmpp_2m", "unipc"} <= set(summary["latentkit_solvers"])
    assert "euler_ancestral" not in summary["latentkit_solvers"]
    assert any(s.startswith("lcm:") for s in summary["skipped"])
    results = on_disk["results"]
    assert {r["library"] for r in results} == {"latentkit", "diffusers"}
    assert {"trailing", "karras", "exponential"} <= {r["grid"] for r in results if r["library"] == "latentkit"}
    assert all(r["calls"] <= r["budget"] for r in results)  # calls are counted, not assumed
    assert summary["reference"]["convergence"] < 1e-4
    assert on_disk["timing"]["total"] > 0


def test_diffusers_wrapper_is_exact(quick_run: tuple[dict[str, Any], dict[str, Any]]) -> None:
    summary, _ = quick_run
    # same grid, same algorithm: diffusers and latentkit agree to float32 rounding
    assert {row["latentkit"] for row in summary["pairs"]} >= {"ddim", "euler", "heun", "dpmpp_2m", "unipc"}
    for row in summary["pairs"]:
        assert row["calls"][0] == row["calls"][1]
        assert row["difference"] < fewstep.PAIR_TOL, row
    # the sanity row: every scheduler at 1000 steps lands on the exact PF-ODE solution
    assert {row["scheduler"] for row in summary["sanity"]} == set(summary["diffusers_families"])
    for row in summary["sanity"]:
        assert row["steps"] == fewstep.SANITY_STEPS
        assert row["error"] < fewstep.SANITY_TOL, row
    # and few steps are far from it: the metric separates budgets
    best10 = next(row for row in summary["best"] if row["budget"] == 10)["all"]["diffusers"]
    assert best10["error"] > 2 * max(row["error"] for row in summary["sanity"])


def test_extra_schedules_take_part_like_spacings(quick_run: tuple[dict[str, Any], dict[str, Any]]) -> None:
    summary, _ = quick_run
    planted = [r for r in summary["results"] if r.grid == "karras_rho3"]
    solvers = {s.split("(")[0] for s in summary["latentkit_solvers"]}
    # run by every one-call solver (the budget-step grid fits), never counted as a standard grid
    assert {"ddim", "euler", "dpmpp_2m", "unipc"} <= {r.solver for r in planted} <= solvers
    assert all(not r.standard and r.calls <= r.budget for r in planted)
    assert "heun" not in {r.solver for r in planted}  # 2 calls per step: does not fit the budget
    # the restricted grid ran for its solver only
    assert {r.solver for r in summary["results"] if r.grid == "bad"} == {"euler"}
    # and the planted grid competes for latentkit's best exactly like a spacing
    for budget in fewstep.QUICK_BUDGETS:
        pool = [r for r in summary["results"] if r.library == "latentkit" and r.budget == budget
                and math.isfinite(r.error)]
        best = next(row for row in summary["best"] if row["budget"] == budget)["all"]["latentkit"]
        assert best["error"] == min(r.error for r in pool)
        for r in planted:
            if r.budget == budget:
                assert best["error"] <= r.error
