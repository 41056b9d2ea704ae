"""Reliability, one class of defect per section (issue 22): no bad input, corrupt file or
faulty plugin may lose a run, take the host down, end in a raw traceback or give a silently
wrong result. Each test states the guarantee and checks the example that broke it plus
another member of its class."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import latentkit
from latentkit.cli import main
from latentkit.errors import CheckpointError, ConfigError
from latentkit.experiment import build_model, build_trainer, loads_config
from latentkit.plugins import PluginManager
from latentkit.training import (
    NonFiniteLossError,
    Trainer,
    TrainingConfig,
    latest_checkpoint,
    load_weights,
)
from latentkit.training.checkpoint import checkpoint_dirs, is_intact, save_checkpoint
from test_config import VALID
from test_trainer import TinyData, TinyModel

pytestmark = pytest.mark.usefixtures("single_thread")


def _pm() -> PluginManager:
    return PluginManager(autoload=False)


def _cfg(tmp_path: Path, **kw: Any) -> TrainingConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp_path), max_steps=4, batch_size=4, lr=1e-2,
                                checkpoint_every=1, keep_last=3, progress=False, log_every=1)
    base.update(kw)
    return TrainingConfig(**base)


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(VALID + f"output_dir = {json.dumps(str(tmp_path / 'run'))}\ncheckpoint_every = 1\n")
    return path


# ----------------------------------------------------------------------- 1. unbounded resources


def test_worker_counts_are_bounded_by_the_cpus(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"num_workers must be at most the \d+ CPUs"):
        Trainer(TinyModel(), TinyData(), _cfg(tmp_path, num_workers=10**6), plugin_manager=_pm())


@pytest.mark.parametrize(("key", "value", "expect"), [
    ("lr", math.inf, "lr must be a finite number"),
    ("eps", math.nan, "eps must be a finite number"),
    ("ema_power", math.nan, "ema_power must be a finite number"),
    ("sample_guidance", math.inf, "sample_guidance must be a finite number"),
    ("seed", 2**64, r"seed must lie in \[0, 2\^63\)"),
    ("seed", -1, r"seed must lie in \[0, 2\^63\)"),
    ("nonfinite_skip_limit", 0.0, r"nonfinite_skip_limit must lie in \(0, 1\]"),
])
def test_every_numeric_training_option_has_a_range(key: str, value: Any, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        TrainingConfig(**{key: value})


def test_a_model_too_large_for_memory_is_refused_before_allocating() -> None:
    """A width typed a few digits too long builds on the meta device first: an error naming
    the GiB needed and available, not the kernel's out-of-memory killer."""
    for width in ("model_channels = 200000", "model_channels = 40000"):
        with pytest.raises(ConfigError, match=r"\[denoiser\] denoiser 'unet' would need [\d.]+ GiB .* available"):
            build_model(loads_config(VALID.replace("model_channels = 8", width), path="exp.toml"))


# ----------------------------------------------------------------------- 2. pruning


def _save(directory: Path, step: int, keep_last: int = 1) -> Path:
    return save_checkpoint(directory, step, model_state={"w": torch.full((64,), float(step))},
                           state={"step": step}, keep_last=keep_last)


def _flip_byte(path: Path, offset: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pruning_never_keeps_a_same_size_corrupt_checkpoint_over_a_good_new_one(tmp_path: Path) -> None:
    newest = _save(tmp_path, 10, keep_last=3)
    _flip_byte(newest / "model.safetensors")  # same size, wrong SHA-256
    saved = _save(tmp_path, 5, keep_last=1)  # a restarted run writes step 5: it must survive pruning
    assert saved.is_dir() and latest_checkpoint(tmp_path).step == 5  # type: ignore[union-attr]
    assert not is_intact(newest)


def test_loading_and_pruning_judge_intact_alike(tmp_path: Path) -> None:
    good, bad = _save(tmp_path, 1, keep_last=3), _save(tmp_path, 2, keep_last=3)
    manifest = bad / "state.json"
    manifest.write_text(manifest.read_text().replace('"step": 2', '"step": 3'))  # same size, digest now wrong
    assert is_intact(good) and not is_intact(bad)
    with pytest.raises(CheckpointError, match="does not match its own digest"):
        latentkit.training.load_checkpoint(bad)


# ----------------------------------------------------------------------- 3. a failed resume


def test_a_resume_with_a_config_that_does_not_fit_is_refused_and_changes_nothing(
        config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_cli(["train", str(config_file)], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    before = _digest(run)
    for old, new, key in [("model_channels = 8", "model_channels = 16", "[denoiser] model_channels"),
                          ("size = 16", "size = 8", "[data] size")]:
        config_file.write_text(config_file.read_text().replace(old, new))
        line = _one_line_error(*_run_cli(["train", str(config_file)], capsys)[::2])
        assert key in line and "cannot resume" in line
        config_file.write_text(config_file.read_text().replace(new, old))
        assert _digest(run) == before  # config.toml and every checkpoint untouched
    code, out, err = _run_cli(["sample", str(run), "--label", "1", "--steps", "2", "--num", "1",
                               "--out", str(tmp_path / "g.png")], capsys)
    assert code == 0, err  # the run still samples
    # a safe change resumes
    config_file.write_text(config_file.read_text().replace("max_steps = 2", "max_steps = 3"))
    code, out, err = _run_cli(["train", str(config_file)], capsys)
    assert code == 0 and "resuming from" in out and "step 3" in out, err


# ----------------------------------------------------------------------- 4. late validation


@pytest.mark.parametrize(("extra", "expect"), [
    ('sample_every = 1\nsample_sampler = "eulr"\n', r"sample_sampler: unknown sampler 'eulr'"),
    ('sample_every = 1\nsample_prompts = ["a red circle"]\n', r"sample_prompts: sample_prompts needs a text-conditioned"),
    ("sample_every = 1\nsample_labels = [3, 99]\n", r"sample_labels: .*must lie in"),
])
def test_sampling_options_are_checked_before_any_step(tmp_path: Path, extra: str, expect: str) -> None:
    text = VALID + f"output_dir = {json.dumps(str(tmp_path))}\n" + extra
    with pytest.raises(ConfigError, match=expect):
        build_trainer(loads_config(text, path="exp.toml"), manager=_pm())
    assert not (tmp_path / "checkpoints").exists()


class FailingSampler(TinyModel):
    def sample(self, batch: Any, **options: Any) -> torch.Tensor:
        raise RuntimeError("the sampler blew up")


def test_a_failing_sample_grid_costs_a_warning_not_the_run(tmp_path: Path) -> None:
    trainer = Trainer(FailingSampler(), TinyData(), _cfg(tmp_path, sample_every=1, sample_count=2),
                      plugin_manager=_pm())
    with pytest.warns(UserWarning, match="sample grid skipped: RuntimeError: the sampler blew up"):
        trainer.fit()
    assert trainer.step == 4 and latest_checkpoint(tmp_path / "checkpoints").step == 4  # type: ignore[union-attr]


# ----------------------------------------------------------------------- 5. plugins


def test_a_plugin_that_exits_at_import_is_a_broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lk_exits_plugin.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LATENTKIT_PLUGINS", "lk_exits_plugin")
    pm = PluginManager(autoload=False)
    assert "euler" in {i.name for i in pm.list("sampler")}  # the others still load
    (broken,) = [b for b in pm.broken if b.plugin == "lk_exits_plugin"]
    assert broken.stage == "import" and "SystemExit" in broken.error


class RaisesAtStep:
    def __init__(self, hook: str, step: int = 3) -> None:
        self.hook, self.at = hook, step

    @latentkit.hookimpl
    def latentkit_train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        if self.hook == "step_end" and step == self.at:
            raise RuntimeError("the logger's disk is full")

    @latentkit.hookimpl
    def latentkit_write_samples(self, samples: Any, path: str, layout: str, captions: Any, value_range: Any) -> Any:
        if self.hook == "write_samples":
            raise ZeroDivisionError("the writer divided by zero")
        return None


def test_a_failing_hook_saves_its_step_and_names_the_plugin(tmp_path: Path) -> None:
    pm = _pm()
    pm.register(RaisesAtStep("step_end"), "flaky-logger", distribution="flaky-dist")
    trainer = Trainer(TinyModel(), TinyData(), _cfg(tmp_path, max_steps=10, checkpoint_every=100), plugin_manager=pm)
    with pytest.raises(RuntimeError, match="disk is full") as info:
        trainer.fit()
    assert "latentkit_train_step_end of plugin 'flaky-logger' (distribution flaky-dist)" in info.value.__notes__[0]
    assert latest_checkpoint(tmp_path / "checkpoints").step == 3  # type: ignore[union-attr]  # not lost


def test_a_failing_writer_is_one_line_naming_the_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_cli(["train", str(config_file)], capsys)[0] == 0
    pm = latentkit.get_plugin_manager()
    writer = RaisesAtStep("write_samples")
    pm.register(writer, "bad-writer", distribution="bad-writer-dist")
    try:
        code, _, err = _run_cli(["sample", str(tmp_path / "run"), "--label", "1", "--steps", "1", "--num", "1",
                                 "--out", str(tmp_path / "g.png")], capsys)
    finally:
        pm.pm.unregister(writer)
    line = _one_line_error(code, err)
    assert "ZeroDivisionError: the writer divided by zero" in line and "plugin 'bad-writer'" in line
    assert "bad-writer-dist" in line and "while writing" in line


# ----------------------------------------------------------------------- 6. the manifest


def test_an_edited_manifest_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    _save(tmp_path, 1, keep_last=3)
    newest = _save(tmp_path, 2, keep_last=3)
    text = (newest / "state.json").read_text()
    for edit in (text.replace('"step": 2', '"step": 7'),  # a resume at the wrong step, before
                 text.replace('"files"', '"filez"'),  # a cryptic "error: files", before
                 '{"format": "latentkit-checkpoint", "format_version": 2, "state": ' + "[" * 100000 + "]" * 100000 + "}"):
        (newest / "state.json").write_text(edit)
        with pytest.warns(UserWarning, match=r"skipping checkpoint: checkpoint .*step_00000002.*(corrupt|unreadable)"):
            assert latest_checkpoint(tmp_path).step == 1  # type: ignore[union-attr]


# ----------------------------------------------------------------------- 7. non-finite weights


def test_non_finite_weights_are_never_saved_or_called_good(tmp_path: Path) -> None:
    trainer = Trainer(TinyModel(), TinyData(), _cfg(tmp_path, lr=1e39, grad_clip=None, checkpoint_every=1),
                      plugin_manager=_pm())
    with pytest.raises(NonFiniteLossError, match="weights after the update") as info:
        trainer.fit()
    for _, path in checkpoint_dirs(tmp_path / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_weights(path, ema=False).values()), path
    assert "none yet" in str(info.value) or "step_" in str(info.value)


def test_skipping_cannot_hide_a_run_that_does_not_train(tmp_path: Path) -> None:
    class MostlyNaN(TinyModel):
        calls = 0

        def loss(self, batch: dict[str, Any], *, generator: torch.Generator | None = None) -> Any:
            MostlyNaN.calls += 1
            loss, terms = super().loss(batch, generator=generator)
            return (loss * math.nan if MostlyNaN.calls % 5 else loss), terms

    trainer = Trainer(MostlyNaN(), TinyData(), _cfg(tmp_path, max_steps=40, nonfinite="skip"), plugin_manager=_pm())
    with pytest.raises(NonFiniteLossError, match=r"steps were skipped .* more than nonfinite_skip_limit = 0.25"):
        trainer.fit()
    assert trainer.step < 40


def test_a_few_skipped_steps_are_reported(tmp_path: Path) -> None:
    class OneNaN(TinyModel):
        calls = 0

        def loss(self, batch: dict[str, Any], *, generator: torch.Generator | None = None) -> Any:
            OneNaN.calls += 1
            loss, terms = super().loss(batch, generator=generator)
            return (loss * math.nan if OneNaN.calls == 5 else loss), terms

    trainer = Trainer(OneNaN(), TinyData(), _cfg(tmp_path, max_steps=20, nonfinite="skip"), plugin_manager=_pm())
    with pytest.warns(UserWarning, match="1 of 20 steps were skipped"):
        trainer.fit()


# ----------------------------------------------------------------------- 8. silent wrong results


def test_values_that_used_to_be_silently_wrong_are_errors(config_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"channel_mult must be array of integer .* got '12'"):
        loads_config(VALID.replace("channel_mult = [1, 2]", 'channel_mult = "12"'))
    assert _run_cli(["train", str(config_file)], capsys)[0] == 0
    for guidance in ("nan", "inf"):
        line = _one_line_error(*_run_cli(["sample", str(tmp_path / "run"), "--label", "1", "--guidance", guidance,
                                          "--out", str(tmp_path / "g.png")], capsys)[::2])
        assert "guidance_scale: expected a finite number" in line
    assert not (tmp_path / "g.png").exists()


# ----------------------------------------------------------------------- 9. raw tracebacks


def test_bad_inputs_that_raised_inside_torch_are_one_line(config_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = config_file.read_text()
    cases = {
        "unknown device": text.replace("progress = false", 'progress = false\ndevice = "gpu7"'),
        "absent device": text.replace("progress = false", 'progress = false\ndevice = "cuda:9"'),
        "negative channels": text.replace("model_channels = 8", "model_channels = -8"),
        "zero channels": text.replace("model_channels = 8", "model_channels = 0"),
    }
    if torch.cuda.is_available():
        del cases["absent device"]
    for name, case in cases.items():
        config_file.write_text(case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own note on zero-element tensors
            line = _one_line_error(*_run_cli(["train", str(config_file)], capsys)[::2])
        assert "exp.toml" in line or "device" in line, (name, line)
    not_safetensors = tmp_path / "weights.safetensors"
    not_safetensors.write_bytes(b"\xff" * 64)
    nested = tmp_path / "nested.safetensors"
    header = ("{" + '"a":' * 0 + '"x": ' + "[" * 50000 + "]" * 50000 + "}").encode()
    nested.write_bytes(struct.pack("<Q", len(header)) + header)
    for weights in (not_safetensors, nested, tmp_path / "nowhere.safetensors"):
        config_file.write_text(text.replace('name = "unet"', f'name = "unet"\nweights_from = {json.dumps(str(weights))}'))
        line = _one_line_error(*_run_cli(["train", str(config_file)], capsys)[::2])
        assert "weights_from" in line, line


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_a_pickle_that_names_code_is_refused_without_bad_advice(tmp_path: Path) -> None:
    from latentkit.conditioners.base import load_weights_file

    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"w": torch.zeros(2), "x": Evil()}))
    with pytest.raises(CheckpointError, match="refused to unpickle") as info:
        load_weights_file(path)
    assert "weights_only=False" not in str(info.value)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        latentkit.create("conditioner", "timm_image", model_name="resnet18", weights=str(path))


def test_any_unexpected_error_is_one_line_naming_the_step(config_file: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise MemoryError("out of memory in the loss")

    monkeypatch.setattr(latentkit.LatentDiffusion, "loss", explode)
    line = _one_line_error(*_run_cli(["train", str(config_file)], capsys)[::2])
    assert "while training (after step 0" in line and "MemoryError: out of memory in the loss" in line


# ----------------------------------------------------------------------- 10. paths


def test_every_relative_path_of_a_config_is_taken_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    first = VALID + 'output_dir = "runs/a"\ncheckpoint_every = 2\n'
    (tmp_path / "configs" / "a.toml").write_text(first)
    assert main(["train", "configs/a.toml"], out=io.StringIO()) == 0
    assert (tmp_path / "runs" / "a" / "checkpoints").is_dir() and not (tmp_path / "configs" / "runs").exists()
    second = first.replace("runs/a", "runs/b").replace('name = "unet"', 'name = "unet"\nweights_from = "runs/a"')
    second = second.replace("[data]", '[data]\ncache_latents = true\ncache_dir = "caches"')
    cfg = loads_config(second, path=str(tmp_path / "configs" / "b.toml"))
    trainer = build_trainer(cfg)
    assert (tmp_path / "caches").is_dir() and not (tmp_path / "configs" / "caches").exists()
    assert trainer.step == 0


def test_python_version_note_mechanism_matches_the_cli() -> None:
    """The notes a hook failure carries are printed on the command line's one line on every
    supported Python (``__notes__`` is what ``add_note`` writes on 3.11+)."""
    from latentkit.cli.stage import one_line

    exc = RuntimeError("boom")
    exc.__notes__ = ["raised by latentkit_train_end of plugin 'p' (distribution d)"]  # type: ignore[attr-defined]
    assert one_line(exc) == "RuntimeError: boom (raised by latentkit_train_end of plugin 'p' (distribution d))"
    assert sys.version_info >= (3, 10)
