"""Optimised step schedules: the GITS dynamic programme is exact on its grid, the optimised
schedule beats the fixed spacings on the closed-form Gaussian problem, the search is
deterministic, files carry the model identity and are refused for another model, the CLI
round trip, and the published AYS spacings."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import latentkit
from latentkit.cli import main
from latentkit.diffusion import ParameterizedDenoiser
from latentkit.diffusion.schedule_optimization import (
    OptimizedSchedule,
    ScheduleMismatchError,
    dp_schedule,
    load_schedule,
    model_fingerprint,
    optimize_schedule,
    parse_sigmas,
)
from latentkit.errors import ConfigError
from latentkit.schedules.discrete import AYS_NOISE_LEVELS, ays_sigmas
from latentkit.schedules.flow import FlowSchedule
from latentkit.testing.checks import check_schedule_sigmas
from latentkit.testing.gaussian import GaussianData

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = GaussianData([0.5, -0.3], [0.8, 1.3])


def _draws(sigma_max: float, n: int = 128) -> torch.Tensor:
    noise = torch.randn(n, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return noise if math.isinf(sigma_max) else noise * sigma_max


def _exact_error(sampler: str, sigmas: torch.Tensor, x: torch.Tensor) -> float:
    out = latentkit.create("sampler", sampler).sample(DATA.denoise, x.clone(), sigmas.double())
    exact = DATA.ode_solution(x, float(sigmas[0]), 0.0)
    return float(((out - exact) / DATA._bcast(DATA.std, exact)).pow(2).mean().sqrt())


def test_the_dynamic_programme_finds_the_cheapest_path_on_its_grid() -> None:
    """Against brute force over every path of 3 jumps on a 7-step grid."""
    levels = [10.0, 5.0, 2.5, 1.2, 0.6, 0.2, 0.05, 0.0]
    gen = torch.Generator().manual_seed(1)
    states = [torch.randn(16, 2, generator=gen) * (s + 0.5) for s in levels]
    denoised = [torch.randn(16, 2, generator=gen) * 0.5 for _ in levels[:-1]]
    path, cost = dp_schedule(states, denoised, levels, 3, data_std=0.8)

    def path_cost(p: list[int]) -> float:
        total = 0.0
        for i, j in itertools.pairwise(p):
            pred = denoised[i] if levels[j] == 0 else denoised[i] + levels[j] * (states[i] - denoised[i]) / levels[i]
            total += float((pred.double() - states[j].double()).pow(2).mean()) * 0.64 / (0.64 + levels[j] ** 2)
        return total

    best = min(([0, *mid, 7] for mid in itertools.combinations(range(1, 7), 2)), key=path_cost)
    assert path == best and cost == pytest.approx(path_cost(best))


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc", "heun"])
def test_the_optimised_schedule_beats_karras_and_log_linear_at_five_steps(sampler: str) -> None:
    schedule = latentkit.create("schedule", "scaled_linear")
    fine = schedule.sigmas(48, "karras")
    x = _draws(float(fine[0]))
    result = optimize_schedule(DATA.denoise, sampler, 5, x, fine)
    assert result.steps == 5 and result.sigmas[0] == pytest.approx(float(fine[0])) and result.sigmas[-1] == 0.0
    assert all(b < a for a, b in itertools.pairwise(result.sigmas))
    ours = _exact_error(sampler, result.tensor(), x)
    for spacing in ("karras", "exponential"):
        theirs = _exact_error(sampler, schedule.sigmas(5, spacing), x)
        assert ours < 0.5 * theirs, (spacing, ours, theirs)


def test_the_search_is_deterministic_and_the_file_round_trips(tmp_path: Path) -> None:
    fine = latentkit.create("schedule", "scaled_linear").sigmas(24, "karras")
    x = _draws(float(fine[0]), 32)
    a = optimize_schedule(DATA.denoise, "dpmpp_2m", 4, x, fine, model="abc", description="test", seed=3)
    b = optimize_schedule(DATA.denoise, "dpmpp_2m", 4, x, fine, model="abc", description="test", seed=3)
    assert a.sigmas == b.sigmas and a.error == b.error
    path = a.save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    assert data["format"] == "latentkit-schedule-1" and data["model"] == "abc" and data["steps"] == 4
    back = load_schedule(path, model="abc", sampler="dpmpp_2m")
    assert back.sigmas == a.sigmas and back.sampler == "dpmpp_2m" and back.seed == 3


def test_a_schedule_is_refused_for_another_model_or_sampler_unless_forced(tmp_path: Path) -> None:
    one, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert model_fingerprint(one) != model_fingerprint(other)
    assert model_fingerprint(one) == model_fingerprint(one)
    path = OptimizedSchedule(sigmas=(14.6, 2.0, 0.3, 0.0), sampler="dpmpp_2m", model=model_fingerprint(one),
                             description="run A").save(tmp_path / "s.json")
    with pytest.raises(ScheduleMismatchError, match="run A"):
        load_schedule(path, model=other)
    with pytest.raises(ScheduleMismatchError, match="'dpmpp_2m', not 'euler'"):
        load_schedule(path, model=one, sampler="euler")
    assert load_schedule(path, model=other, sampler="euler", force=True).sigmas == (14.6, 2.0, 0.3, 0.0)


@pytest.mark.parametrize(("text", "match"), [
    ("3,2,2,0", "strictly decreasing"), ("1,inf,0", "only the\nfirst may be inf|first may be inf"),
    ("5", "at least two"), ("a,b", "comma-separated"), ("5,0,1", "decreasing"),
])
def test_bad_sigma_lists_and_files_are_clear_errors(text: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_sigmas(text)
    assert parse_sigmas("inf, 3, 0.5, 0") == (math.inf, 3.0, 0.5, 0.0)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"format\": \"something else\"}")
    with pytest.raises(ConfigError, match="not a latentkit schedule file"):
        load_schedule(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a schedule file"):
        load_schedule(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_schedule(tmp_path / "missing.json")


def test_a_flow_model_schedule_starts_from_pure_noise(tmp_path: Path) -> None:
    """On a flow grid (first level inf) the first level stays inf, through JSON too."""
    from test_flow import ExactVelocity

    schedule = FlowSchedule(shift=3.0)
    model = ParameterizedDenoiser(ExactVelocity(), schedule, "flow")
    x = _draws(math.inf, 64)
    fine = schedule.sigmas(32)
    result = optimize_schedule(model.denoise, "dpmpp_2m", 4, x, fine,
                               baselines={"linspace": schedule.sigmas(4)})
    assert math.isinf(result.sigmas[0]) and result.error < result.baselines["linspace"]
    back = load_schedule(result.save(tmp_path / "flow.json"))
    assert math.isinf(back.sigmas[0]) and back.sigmas == result.sigmas


def test_ays_spacings_are_the_published_levels_and_interpolate() -> None:
    schedule = latentkit.create("schedule", "scaled_linear")  # Stable Diffusion's, 1000 steps
    assert {"ays_sd15", "ays_sdxl"} <= set(schedule.spacings)
    for name, published in AYS_NOISE_LEVELS.items():
        ten = schedule.sigmas(10, name, dtype=torch.float64)
        assert ten[:-1].tolist() == pytest.approx(list(published[:-1])) and float(ten[-1]) == 0.0
        for steps in (3, 5, 20, 40):
            levels = ays_sigmas(name, steps)
            assert len(levels) == steps + 1 and bool((levels[1:] < levels[:-1]).all())
            assert float(levels[0]) == pytest.approx(published[0])
    check_schedule_sigmas(schedule)  # every spacing, ays included, passes the conformance check
    # a schedule whose range does not hold the published levels does not offer them
    assert "ays_sd15" not in latentkit.create("schedule", "scaled_linear", num_train_timesteps=100).spacings


FLOW_RUN_CONFIG = """
[autoencoder]
name = "identity"
channels = 3

[denoiser]
name = "unet"
model_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [2]
num_heads = 2
norm_groups = 4

[schedule]
name = "flow"

[model]
parameterization = "flow"
latent_size = [8, 8]

[data]
name = "shapes"
size = 8
length = 16

[training]
output_dir = "OUTPUT"
max_steps = 2
batch_size = 4
ema_decay = 0.5
checkpoint_every = 2
progress = false
"""


def test_schedule_optimize_then_sample_with_it_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(FLOW_RUN_CONFIG.replace("OUTPUT", str(tmp_path / "run")))
    assert main(["train", str(config)], out=io.StringIO()) == 0
    out = io.StringIO()
    code = main(["schedule", "optimize", str(tmp_path / "run"), "--steps", "3", "--sampler", "euler",
                 "--samples", "8", "--fine-steps", "8", "--out", str(tmp_path / "s3.json")], out=out)
    assert code == 0, out.getvalue()
    assert "3 steps of euler" in out.getvalue() and (tmp_path / "s3.json").is_file()
    out = io.StringIO()
    code = main(["sample", str(tmp_path / "run"), "--schedule", str(tmp_path / "s3.json"), "--num", "2",
                 "--out", str(tmp_path / "grid.png")], out=out)
    assert code == 0, out.getvalue()  # the sampler came from the file (euler)
    assert main(["sample", str(tmp_path / "run"), "--schedule", "inf,2,0.5,0", "--num", "1",
                 "--out", str(tmp_path / "list.png")], out=io.StringIO()) == 0
    # the raw weights are another model: refused in one line, unless forced
    code = main(["sample", str(tmp_path / "run"), "--schedule", str(tmp_path / "s3.json"), "--no-ema",
                 "--num", "1", "--out", str(tmp_path / "x.png")], out=io.StringIO())
    assert code == 2
    assert main(["sample", str(tmp_path / "run"), "--schedule", str(tmp_path / "s3.json"), "--no-ema",
                 "--force-schedule", "--num", "1", "--out", str(tmp_path / "x.png")], out=io.StringIO()) == 0
