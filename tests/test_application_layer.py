"""The application layer: the trainer owns EMA and stopping (time budget, request_stop),
hooks for one run, trainable models as registered components, and the package's layering
(no module imports a layer above its own; the plugin distributions use no private state)."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import latentkit
from latentkit.errors import ConfigError, PluginError
from latentkit.experiment import build_model, loads_config
from latentkit.plugins import PluginManager, Registrar
from latentkit.training import Trainer, TrainingConfig, WarmupDecay, latest_checkpoint, load_weights
from latentkit.training.checkpoint import checkpoint_dirs
from test_trainer import TinyData, TinyModel

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, **kw: Any) -> TrainingConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp_path), max_steps=6, batch_size=4, lr=1e-2,
                                ema_decay=0.9, checkpoint_every=6, progress=False, log_every=1)
    base.update(kw)
    return TrainingConfig(**base)


# ----------------------------------------------------------------------- EMA


def test_ema_is_the_trainers_own_with_the_builtin_plugins_blocked(tmp_path: Path) -> None:
    """Blocking latentkit.training.plugins (loggers, bars, grids) must not freeze the EMA at
    the initial weights: both runs save the same EMA, and it moved."""
    saved = {}
    for blocked in (False, True):
        pm = PluginManager(autoload=False, block=["latentkit.training.plugins"] if blocked else [])
        torch.manual_seed(0)
        model = TinyModel()
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        out = tmp_path / str(blocked)
        trainer = Trainer(model, TinyData(), _cfg(out), plugin_manager=pm)
        trainer.fit()
        assert trainer.ema is not None and trainer.ema.num_updates == 6
        saved[blocked] = load_weights(out, ema=True)
        assert not (out / "metrics.csv").exists() if blocked else (out / "metrics.csv").exists()
        assert any(not torch.equal(saved[blocked][k], initial[k]) for k in initial)
    for key, value in saved[False].items():
        assert torch.equal(saved[True][key], value), key


# ----------------------------------------------------------------------- stopping


class Clocked(TinyModel):
    """Each loss call is one second of a fake clock: a time budget in steps, exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def loss(self, batch: dict[str, Any], *, generator: torch.Generator | None = None) -> Any:
        self.calls += 1
        return super().loss(batch, generator=generator)


class LrRecorder:
    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.reasons: list[str | None] = []

    @latentkit.hookimpl
    def latentkit_train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.lrs.append(metrics["lr"])
        self.reasons.append(trainer.stop_reason)


def _budget_run(out: Path, max_seconds: float) -> tuple[Trainer, LrRecorder]:
    torch.manual_seed(0)
    model = Clocked()
    recorder = LrRecorder()
    cfg = _cfg(out, max_steps=1000, max_seconds=max_seconds, warmup_steps=4, lr_decay="cosine",
               min_lr_ratio=0.1, checkpoint_every=1000)
    trainer = Trainer(model, TinyData(), cfg, plugin_manager=PluginManager(autoload=False),
                      plugins=[recorder], clock=lambda: float(model.calls))
    trainer.fit()
    return trainer, recorder


def test_a_time_budget_stops_at_the_budget_with_a_checkpoint_and_a_fitted_lr_decay(tmp_path: Path) -> None:
    trainer, recorder = _budget_run(tmp_path, 20.0)
    assert trainer.step == 20 and trainer.stop_reason == "max_seconds" and trainer.train_seconds == 20.0
    assert [s for s, _ in checkpoint_dirs(tmp_path / "checkpoints")] == [20]
    # the cosine decay ends at the step the budget ends at, not at max_steps = 1000: the lr of
    # every step is that of a run planned for 20 steps
    planned = WarmupDecay(4, 20, "cosine", 0.1)
    assert recorder.lrs == pytest.approx([1e-2 * planned(s) for s in range(20)], rel=1e-6)
    assert recorder.lrs[-1] < 0.12 * 1e-2
    # the hooks of the last step already know why it is the last
    assert recorder.reasons[-1] == "max_seconds" and set(recorder.reasons[:-1]) == {None}


def test_the_time_budget_counts_across_a_resume(tmp_path: Path) -> None:
    first, _ = _budget_run(tmp_path, 8.0)
    assert first.step == 8
    resumed, _ = _budget_run(tmp_path, 12.0)  # 4 more seconds, in the same run directory
    assert resumed.step == 12 and resumed.train_seconds == 12.0 and resumed.stop_reason == "max_seconds"
    assert latest_checkpoint(tmp_path / "checkpoints").state["train_seconds"] == 12.0  # type: ignore[union-attr]


def test_request_stop_from_a_hook_of_this_run_only(tmp_path: Path) -> None:
    class StopAtThree:
        @latentkit.hookimpl
        def latentkit_train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
            if step == 3:
                trainer.request_stop("enough")

    pm = PluginManager(autoload=False)
    stopper = StopAtThree()
    trainer = Trainer(TinyModel(), TinyData(), _cfg(tmp_path, max_steps=50, checkpoint_every=100),
                      plugin_manager=pm, plugins=[stopper])
    trainer.fit()
    assert trainer.step == 3 and trainer.stop_reason == "enough"
    assert [s for s, _ in checkpoint_dirs(tmp_path / "checkpoints")] == [3]
    assert not pm.pm.is_registered(stopper)  # registered for that fit() only
    assert Trainer(TinyModel(), TinyData(), _cfg(tmp_path / "b", max_steps=4), plugin_manager=pm).fit()
    assert not (tmp_path / "b" / "checkpoints" / "step_00000003").exists()


def test_checkpoint_every_zero_writes_no_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(TinyModel(), TinyData(), _cfg(tmp_path, checkpoint_every=0),
                      plugin_manager=PluginManager(autoload=False))
    trainer.fit()
    assert trainer.step == 6 and trainer.stop_reason == "max_steps"
    assert not (tmp_path / "checkpoints").exists()


def test_budget_and_checkpoint_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"max_seconds must be > 0"):
        TrainingConfig(max_seconds=0.0)
    with pytest.raises(ConfigError, match=r"checkpoint_every must be >= 0"):
        TrainingConfig(checkpoint_every=-1)


# ----------------------------------------------------------------------- models by name


class RegressionModel(torch.nn.Module):
    """A training model for an autoencoder part, as a plugin would register one."""

    def __init__(self, autoencoder: Any, scale: float = 1.0) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.head = torch.nn.Conv2d(3, 3, 1)
        self.scale = scale

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"]
        return self.scale * ((self.head(self.autoencoder.decode(self.autoencoder.encode(x).mode())) - x) ** 2).mean()


class ModelPlugin:
    @latentkit.hookimpl
    def latentkit_register_models(self, registry: Registrar) -> None:
        registry.add("regression_test", RegressionModel, summary="an in-test model")


MODEL_CONFIG = """\
[autoencoder]
name = "identity"
channels = 3

[model]
kind = "regression_test"
scale = 2.0

[data]
name = "shapes"
size = 8
length = 8

[training]
max_steps = 1
batch_size = 4
progress = false
"""


@pytest.fixture(scope="module")
def model_pm() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(ModelPlugin(), "model-plugin")
    return pm


def test_a_registered_model_is_named_by_kind(model_pm: PluginManager) -> None:
    assert "regression_test" in {i.name for i in model_pm.list("model")}
    assert {"diffusion", "autoencoder", "stable_diffusion"} <= {i.name for i in model_pm.list("model")}
    model = build_model(loads_config(MODEL_CONFIG, manager=model_pm), manager=model_pm)
    assert isinstance(model, RegressionModel) and model.scale == 2.0


@pytest.mark.parametrize(("change", "expect"), [
    (("scale = 2.0", "scael = 2.0"), r"\[model\] unknown key 'scael' for RegressionModel; allowed keys: kind, scale"),
    (("[autoencoder]\nname = \"identity\"\nchannels = 3\n", ""), r"missing section \[autoencoder\], required for kind = 'regression_test'"),
    (("[model]", "[schedule]\nname = \"linear\"\n\n[model]"), r"section \[schedule\] is not used when \[model\] kind = 'regression_test'"),
    (('kind = "regression_test"', 'kind = "regresion_test"'), r"\[model\] kind must be .*'regression_test'.*got 'regresion_test'.*Did you mean 'regression_test'"),
])
def test_model_kind_errors_name_the_key_and_line(model_pm: PluginManager, change: tuple[str, str], expect: str) -> None:
    text = MODEL_CONFIG.replace(*change)
    with pytest.raises(ConfigError, match=expect) as info:
        build_model(loads_config(text, path="exp.toml", manager=model_pm), manager=model_pm)
    assert info.value.line is not None and str(info.value).startswith("exp.toml:")


def test_the_loss_import_string_still_works_with_a_deprecation(model_pm: PluginManager) -> None:
    text = MODEL_CONFIG.replace('kind = "regression_test"', 'kind = "autoencoder"\nloss = "test_application_layer:RegressionModel"')
    with pytest.warns(DeprecationWarning, match="register the loss as a model"):
        cfg = loads_config(text, manager=model_pm)
    assert isinstance(build_model(cfg, manager=model_pm), RegressionModel)


# ----------------------------------------------------------------------- plugins


def test_a_misspelled_hook_is_a_broken_plugin_and_an_error_in_strict_mode() -> None:
    class Misspelled:
        @latentkit.hookimpl
        def latentkit_register_sampler(self, registry: Registrar) -> None:  # no "s"
            raise AssertionError("never called")

    pm = PluginManager(autoload=False)
    pm.load()
    pm.register(Misspelled(), "misspelled")
    (broken,) = [b for b in pm.broken if b.plugin == "misspelled"]
    assert "latentkit_register_sampler" in broken.error and "did you mean 'latentkit_register_samplers'" in broken.error
    strict = PluginManager(autoload=False, strict=True)
    strict.load()
    with pytest.raises(PluginError, match=r"latentkit_register_sampler.*no latentkit hook"):
        strict.register(Misspelled(), "misspelled")


# ----------------------------------------------------------------------- layering

#: The layers of src/latentkit, lowest first: a module may import its own layer and lower ones.
LAYERS: list[set[str]] = [
    {"errors", "fileio", "validation", "specs", "random", "interfaces", "hookspecs", "plugins",
     "composition", "layers", "models", "latent_statistics", "checkpoint_files", "compilation"},
    {"autoencoders", "conditioners", "data", "denoisers", "samplers", "schedules"},
    {"diffusion", "evaluation"},
    {"interop", "samples"},
    {"training", "testing"},
    {"experiment"},
    {"quickstart", "cli"},
]


def _imports(path: Path) -> set[str]:
    """The latentkit subpackages ``path`` imports at run time (``TYPE_CHECKING`` blocks are
    types only)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found |= {n.split(".")[1] for n in names if n.startswith("latentkit.")}
    return found


def test_no_module_imports_a_higher_layer() -> None:
    layer_of = {name: i for i, names in enumerate(LAYERS) for name in names}
    src = ROOT / "src" / "latentkit"
    listed = {p.stem if p.is_file() else p.name for p in src.iterdir()
              if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert listed == set(layer_of), "every module has a layer"
    upward = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).parts
        if rel == ("__init__.py",):
            continue  # the public API: imports the diffusion core lazily, on first use
        own = rel[0].removesuffix(".py")
        upward += [f"{'/'.join(rel)} imports latentkit.{name}" for name in _imports(path)
                   if layer_of[name] > layer_of[own]]
    assert upward == []


def test_the_plugin_distributions_use_no_private_state_of_the_core() -> None:
    """No ``obj._name`` on anything but the plugin's own ``self`` / ``cls``, and no private
    name imported from latentkit."""
    found = []
    for path in sorted(ROOT.glob("plugins/*/src/**/*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("latentkit."):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: imports {a.name}"
                          for a in node.names if a.name.startswith("_")]
    assert found == []


def test_hook_specs_type_the_trainer_with_the_view() -> None:
    import inspect
    import typing

    from latentkit import hookspecs

    for name in ("latentkit_train_start", "latentkit_train_step_end", "latentkit_checkpoint_saved",
                 "latentkit_train_end"):
        assert inspect.signature(getattr(hookspecs, name)).parameters["trainer"].annotation == "TrainerView"
    # every attribute the view promises is one a Trainer has
    trainer_attrs = {n for n in dir(hookspecs.TrainerView) if not n.startswith("_")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(TinyModel(), TinyData(), TrainingConfig(progress=False),
                          plugin_manager=PluginManager(autoload=False))
    assert trainer_attrs <= set(dir(trainer)) and typing.get_type_hints(hookspecs.latentkit_train_end)


DDP_BUDGET_SCRIPT = '''
import json, os, sys, torch
from torch import nn
import latentkit
from latentkit.plugins import PluginManager
from latentkit.training import Trainer, TrainingConfig

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        x = torch.full((4,), float(i) / 64)
        return {"x": x, "y": x.sum(0, keepdim=True).sin()}

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.calls = 0
    def loss(self, batch):
        self.calls += 1
        return ((self.net(batch["x"]) - batch["y"]) ** 2).mean()

rank = int(os.environ["RANK"])
budget = sys.argv[2] == "budget"

class Lrs:
    def __init__(self):
        self.lrs = []
    @latentkit.hookimpl
    def latentkit_train_step_end(self, trainer, step, metrics):
        self.lrs.append(metrics["lr"])
        if not budget and rank == 1 and step == 5:
            trainer.request_stop()  # on one rank only

torch.manual_seed(0)
model, lrs = Model(), Lrs()
cfg = TrainingConfig(output_dir=sys.argv[1], max_steps=1000, max_seconds=12.0 if budget else None, batch_size=4,
                     lr=1e-2, warmup_steps=2, lr_decay="cosine", progress=False, checkpoint_every=1000)
# the ranks' clocks disagree: one second per step on rank 0, three on rank 1
trainer = Trainer(model, Data(), cfg, plugin_manager=PluginManager(autoload=False), plugins=[lrs],
                  clock=lambda: float(model.calls * (1 + 2 * rank)))
trainer.fit()
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "step": trainer.step, "reason": trainer.stop_reason, "lrs": lrs.lrs,
               "weight": model.net.weight.detach().tolist()}, f)
'''


@pytest.mark.parametrize("mode", ["budget", "request"])
def test_under_ddp_every_rank_stops_at_the_same_step(tmp_path: Path, mode: str) -> None:
    """The time budget and the lr plan it makes are rank 0's, so both ranks stop at the same
    step with the same lr at every step (different lrs would make the replicas drift apart);
    a stop requested on one rank stops both at that step."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "budget.py"
    script.write_text(DDP_BUDGET_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "run"), mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    step, reason = (12, "max_seconds") if mode == "budget" else (5, "requested")
    assert results[0]["step"] == results[1]["step"] == step and {r["reason"] for r in results} == {reason}
    assert results[0]["lrs"] == results[1]["lrs"] and results[0]["weight"] == results[1]["weight"]


def test_a_model_built_with_a_manager_samples_through_it() -> None:
    text = MODEL_CONFIG.replace('[model]\nkind = "regression_test"\nscale = 2.0\n', """[denoiser]
name = "unet"
model_channels = 8
channel_mult = [1]
num_res_blocks = 1
attention_resolutions = []
norm_groups = 4

[schedule]
name = "linear"

[model]
latent_size = [8, 8]
""")
    pm = PluginManager(autoload=False)
    model = build_model(loads_config(text, manager=pm), manager=pm)
    assert isinstance(model, latentkit.LatentDiffusion) and model.plugin_manager is pm
    with pytest.raises(ConfigError, match=r"\[model\] unknown key 'plugin_manager'"):
        build_model(loads_config(text.replace("latent_size", 'plugin_manager = "x"\nlatent_size'), manager=pm),
                    manager=pm)


def test_a_component_whose_extra_is_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """``digits`` needs scikit-learn (the ``data`` extra): without it, creating it is a
    one-line error naming the extra, and ``latentkit plugins`` marks it."""
    import io
    import sys

    from latentkit.cli import main
    from latentkit.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if scikit-learn were not installed
    pm = PluginManager(autoload=False)
    with pytest.raises(MissingDependencyError, match=r"dataset 'digits' needs 'sklearn'.*pip install 'latentkit\[data\]'"):
        pm.create("dataset", "digits", size=8)
    assert isinstance(pm.create("dataset", "shapes", size=8, length=2), latentkit.Dataset)
    out = io.StringIO()
    monkeypatch.setenv("LATENTKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert main(["plugins", "--kind", "dataset"], out=out) == 0
    rows = {line.split()[0]: line for line in out.getvalue().splitlines()[3:] if line.strip()}
    assert "latentkit[data]" in rows["digits"] and rows["shapes"].rstrip().endswith("-")


# ----------------------------------------------------------------------- latent statistics


class SmallLatents(latentkit.Autoencoder):
    """A third party's autoencoder (not one of latentkit's own) whose latents have std ~0.1:
    unnormalised, diffusion on them samples noise."""

    def __init__(self) -> None:
        super().__init__(latentkit.DataSpec(channels=3), latentkit.LatentSpec(channels=3, downsampling=(2, 2)))
        self.pool = torch.nn.AvgPool2d(2)

    def encode(self, x: torch.Tensor) -> latentkit.LatentDistribution:
        from latentkit.interfaces import DiagonalGaussianDistribution

        z = 0.1 * self.pool(self.check_data(x))
        return DiagonalGaussianDistribution(torch.cat([z, torch.full_like(z, -12.0)], dim=1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.check_latent(z), scale_factor=2.0) * 10.0


SMALL_LATENTS_CONFIG = """\
[autoencoder]
name = "small_latents"
FIT

[denoiser]
name = "unet"
model_channels = 8
channel_mult = [1]
num_res_blocks = 1
attention_resolutions = []
norm_groups = 4

[schedule]
name = "linear"

[data]
name = "shapes"
size = 8
length = 16

[training]
output_dir = "OUT"
max_steps = 1
batch_size = 8
progress = false
"""


class SmallLatentsPlugin:
    @latentkit.hookimpl
    def latentkit_register_autoencoders(self, registry: Registrar) -> None:
        registry.add("small_latents", SmallLatents, summary="latents of std 0.1")


def test_any_autoencoder_fits_its_latent_statistics() -> None:
    ae = SmallLatents()
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stats = ae.fit_latent_statistics(images, batch_size=8, sample=False)
    assert 0.01 < stats.std < 0.1 and stats.scaling_factor == pytest.approx(1 / stats.std)
    z = ae.encode_normalized(images)
    assert float(z.std()) == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("fit", [False, True])
def test_off_scale_latents_warn_once_with_the_figures_unless_fitted(tmp_path: Path, fit: bool) -> None:
    from latentkit.experiment import build_trainer

    pm = PluginManager(autoload=False)
    pm.register(SmallLatentsPlugin(), "small-latents")
    text = SMALL_LATENTS_CONFIG.replace("FIT", 'fit_statistics = "scale"' if fit else "").replace(
        "OUT", str(tmp_path))
    trainer = build_trainer(loads_config(text, manager=pm), manager=pm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit()
        trainer.model.train()
        trainer.model.loss(next(iter(trainer.data)))  # a second batch: no second warning
    off = [str(w.message) for w in caught if "normalised training latents" in str(w.message)]
    if fit:
        assert off == [] and float(trainer.model.autoencoder.scaling_factor) > 10
    else:
        (message,) = off
        assert "SmallLatents" in message and "std 0.0" in message and "fit_statistics" in message


def test_load_weights_takes_a_run_directory(tmp_path: Path) -> None:
    """docs/training.md says load_weights accepts a run; a run directory with two intact
    checkpoints gives the newest one's weights (it used to find "no intact checkpoint")."""
    trainer = Trainer(TinyModel(), TinyData(), _cfg(tmp_path, max_steps=4, checkpoint_every=2),
                      plugin_manager=PluginManager(autoload=False))
    trainer.fit()
    assert [s for s, _ in checkpoint_dirs(tmp_path / "checkpoints")] == [2, 4]
    from_run = load_weights(tmp_path, ema=False)
    newest = load_weights(tmp_path / "checkpoints" / "step_00000004", ema=False)
    assert from_run.keys() == newest.keys() and all(torch.equal(from_run[k], newest[k]) for k in newest)
