"""``compile`` for sampling: the denoiser through ``torch.compile`` once and kept, the same
samples as eager (slow test: real inductor compilation), and a one-line fallback to eager
where compiling fails, while the caller's own errors stay errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import LabelConditioner, TinyDenoiser
from latentkit import LatentDiffusion
from latentkit.autoencoders.identity import IdentityAutoencoder
from latentkit.cli import main
from latentkit.compilation import CompiledModule
from latentkit.schedules.flow import FlowSchedule

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = {"label": torch.tensor([0, 3])}


def _model() -> LatentDiffusion:
    torch.manual_seed(0)
    cond = LabelConditioner(dim=8)
    den = TinyDenoiser(3, 3, vector_dim=cond.output_spec.vector_dim, crossattn_dim=cond.output_spec.crossattn_dim)
    return LatentDiffusion(IdentityAutoencoder(3), den, cond, schedule=FlowSchedule(), parameterization="flow").eval()


def _failing_compile(module: nn.Module, **_: Any) -> Any:
    def compiled(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("InductorError: no working C++ compiler found\nmore lines")

    return compiled


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    eager = model.sample(LABELS, sampler="euler", steps=3, seed=1, latent_size=(8, 8), guidance_scale=2.0)
    monkeypatch.setattr(torch, "compile", _failing_compile)
    with pytest.warns(RuntimeWarning, match=r"torch\.compile of the denoiser \(TinyDenoiser\) failed "
                                            r"\(RuntimeError: InductorError: no working C\+\+ compiler found\); "
                                            r"running it eagerly") as record:
        out = model.sample(LABELS, sampler="euler", steps=3, seed=1, latent_size=(8, 8), guidance_scale=2.0,
                           compile=True)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    torch.testing.assert_close(out, eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback is kept: no second warning, no recompile
        again = model.sample(LABELS, sampler="euler", steps=3, seed=1, latent_size=(8, 8), guidance_scale=2.0,
                             compile=True)
    torch.testing.assert_close(again, eager)
    assert not model._compiled_denoiser().backbone.compiled


def test_the_callers_errors_are_raised_not_hidden_behind_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("x has the wrong shape")

    monkeypatch.setattr(torch, "compile", _failing_compile)
    wrapped = CompiledModule(Broken(), what="broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="wrong shape"):
            wrapped(torch.zeros(1))
    assert wrapped.compiled  # not marked as a compile failure


def test_compile_is_a_checked_sampling_option_and_a_cli_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"SamplingOptions\.compile: expected a bool"):
        _model().sample(LABELS, steps=1, latent_size=(8, 8), compile="yes")
    calls: list[str] = []

    def identity(module: nn.Module, **_: Any) -> nn.Module:
        calls.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", identity)
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG.replace("OUTPUT", str(tmp_path / "run")))
    assert main(["train", str(config), "--compile"], out=io.StringIO()) == 0
    assert "# override: [training] compile = True" in (tmp_path / "run" / "config.toml").read_text()
    calls.clear()
    out = io.StringIO()
    assert main(["sample", str(tmp_path / "run"), "--compile", "--num", "1", "--steps", "2",
                 "--out", str(tmp_path / "grid.png")], out=out) == 0, out.getvalue()
    assert calls and "LatentDiffusion" not in calls  # the denoiser went to torch.compile, not the model


CONFIG = """
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
name = "linear"
num_train_timesteps = 100

[model]
latent_size = [8, 8]

[data]
name = "shapes"
size = 8
length = 8

[training]
output_dir = "OUTPUT"
max_steps = 1
batch_size = 2
checkpoint_every = 1
progress = false
"""


@pytest.mark.slow
def test_compiled_sampling_equals_eager_sampling() -> None:
    """Real inductor compilation of a tiny UNet: the same samples within 1e-4, and the
    compiled module is kept for the next call."""
    import latentkit

    torch.manual_seed(0)
    unet = latentkit.create("denoiser", "unet", in_channels=3, out_channels=3, model_channels=16,
                            channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_heads=2,
                            norm_groups=8, crossattn_dim=None, vector_dim=None)
    model = LatentDiffusion(IdentityAutoencoder(3), unet, schedule="linear").eval()
    eager = model.sample(2, sampler="dpmpp_2m", steps=4, seed=0, latent_size=(8, 8), clamp=False)
    compiled = model.sample(2, sampler="dpmpp_2m", steps=4, seed=0, latent_size=(8, 8), clamp=False, compile=True)
    backbone = model._compiled_denoiser().backbone
    assert backbone.compiled, backbone.failure
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
    first = backbone._compiled
    model.sample(2, sampler="dpmpp_2m", steps=4, seed=1, latent_size=(8, 8), compile=True)
    assert backbone._compiled is first
