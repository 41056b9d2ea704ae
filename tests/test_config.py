"""TOML configs: strict attrs classes, errors naming key, file and line, hypothesis fuzzing,
and building model and data from a config."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import latentkit.data
from latentkit.experiment import (
    ConfigError,
    build_dataset,
    build_model,
    find_line,
    load_config,
    loads_config,
)
from latentkit.plugins import PluginManager
from latentkit.training import Trainer, TrainingConfig

VALID = """\
# a tiny class-conditional pixel-space model
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

[conditioner]
name = "class_label"
num_classes = 12
embed_dim = 16
dropout = 0.1

[schedule]
name = "scaled_linear"
num_train_timesteps = 100

[model]
parameterization = "eps"

[data]
name = "shapes"
size = 16
length = 16

[training]
max_steps = 2
batch_size = 4
lr = 1e-3
betas = [0.9, 0.99]
lr_decay = "cosine"
progress = false
"""


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = PluginManager(autoload=False)
    manager.load()
    if not manager.pm.is_registered(latentkit.data):
        manager.register(latentkit.data, "latentkit.data")
    return manager


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def _error(text: str, pm: PluginManager, path: str = "exp.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_config(text, path=path, manager=pm)
    return info.value


def test_valid_config_loads_into_typed_classes(pm: PluginManager) -> None:
    cfg = loads_config(VALID, path="exp.toml", manager=pm)
    assert isinstance(cfg.training, TrainingConfig)
    assert cfg.training.lr == 1e-3 and cfg.training.betas == (0.9, 0.99)
    assert cfg.training.lr_decay == "cosine"
    assert cfg.denoiser is not None and cfg.denoiser.name == "unet"
    assert cfg.denoiser.options["channel_mult"] == [1, 2]
    assert cfg.data.name == "shapes" and cfg.data.options == {"size": 16, "length": 16}
    assert cfg.model.kind == "diffusion" and cfg.model.options == {"parameterization": "eps"}


def test_int_is_accepted_for_float_but_not_the_reverse(pm: PluginManager) -> None:
    cfg = loads_config(VALID.replace("lr = 1e-3", "lr = 1"), manager=pm)
    assert cfg.training.lr == 1.0 and isinstance(cfg.training.lr, float)
    err = _error(VALID.replace("max_steps = 2", "max_steps = 2.5"), pm)
    assert err.line == _line_of(VALID, "max_steps") and "max_steps must be integer" in str(err)


@pytest.mark.parametrize(
    ("old", "new", "needle", "expect"),
    [
        ("max_steps = 2", "max_stpes = 2", "max_st", r"exp\.toml:\d+: \[training\] unknown key 'max_stpes'.*Did you mean 'max_steps'"),
        ("lr = 1e-3", 'lr = "fast"', "lr =", r"\[training\] lr must be number, got 'fast'"),
        ('lr_decay = "cosine"', 'lr_decay = "cosinus"', "lr_decay", r"lr_decay must be 'constant' \| 'cosine' \| 'linear'"),
        ("betas = [0.9, 0.99]", "betas = [0.9]", "betas", r"betas must be array of 2"),
        ('name = "unet"', 'name = "unett"', 'name = "unett"', r"\[denoiser\] name: unknown denoiser 'unett'.*dit, unet.*Did you mean 'unet'"),
        ("num_res_blocks = 1", "num_resblocks = 1", "num_resblocks", r"\[denoiser\] unknown key 'num_resblocks' for denoiser 'unet'; allowed keys: .*num_res_blocks"),
        ("num_classes = 12", 'num_classes = "twelve"', "num_classes", r"\[conditioner\] num_classes must be integer for conditioner 'class_label'"),
        ("size = 16", "size = true", "size =", r"\[data\] size must be integer for dataset 'shapes'"),
        ("[model]", "[modle]", "[modle]", r"unknown section \[modle\].*Did you mean 'model'"),
        ('parameterization = "eps"', 'kind = "gan"', "kind", r"\[model\] kind must be 'diffusion', 'autoencoder' or 'stable_diffusion'"),
        ("progress = false", "progress = 0", "progress", r"progress must be boolean, got 0"),
        ("batch_size = 4", "batch_size = 0", "batch_size", r"batch_size must be > 0"),
    ],
)
def test_errors_name_key_file_and_line(pm: PluginManager, old: str, new: str, needle: str, expect: str) -> None:
    assert old in VALID
    text = VALID.replace(old, new, 1)
    err = _error(text, pm)
    assert re.search(expect, str(err)), str(err)
    assert err.path == "exp.toml"
    assert err.line == _line_of(text, needle), (err.line, str(err))
    assert str(err).startswith(f"exp.toml:{err.line}: ")


def test_missing_section_and_missing_name(pm: PluginManager) -> None:
    text = VALID.replace("[schedule]\nname = \"scaled_linear\"\nnum_train_timesteps = 100\n", "")
    err = _error(text, pm)
    assert "missing section [schedule]" in str(err) and "kind = \"autoencoder\"" in str(err)
    err = _error(VALID.replace('name = "shapes"\n', ""), pm)
    assert "[data] needs a 'name' key" in str(err) and err.line == _line_of(VALID, "[data]")


def test_invalid_toml_reports_line(pm: PluginManager) -> None:
    text = VALID.replace("lr = 1e-3", "lr = = 3")
    err = _error(text, pm)
    assert "invalid TOML" in str(err) and err.line == _line_of(text, "lr = = 3")


def test_load_config_from_file_names_the_file(tmp_path: Path, pm: PluginManager) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace("keep", "keep").replace("max_steps = 2", "max_steps = 2\nwarmup = 3"))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:\d+: \[training\] unknown key 'warmup'"):
        load_config(path, manager=pm)


def test_find_line_is_section_aware() -> None:
    text = "[a]\nname = 1\n[b]\n  name = 2\n\"quoted\" = 3\n[c.d]\nname = 4\n"
    assert find_line(text, "a", "name") == 2
    assert find_line(text, "b", "name") == 4
    assert find_line(text, "b", "quoted") == 5
    assert find_line(text, "c.d", "name") == 7
    assert find_line(text, "b") == 3
    assert find_line(text, "x", "name") is None


def test_python_side_validation() -> None:
    with pytest.raises(ConfigError, match=r"\[training\] lr_decay must be"):
        TrainingConfig(lr_decay="step")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ema_decay must lie in \(0, 1\)"):
        TrainingConfig(ema_decay=1.5)
    assert TrainingConfig(grad_clip=0).grad_clip == 0


# ----------------------------------------------------------------------- hypothesis


def _toml_str(s: str) -> str:
    """A TOML basic string (JSON's surrogate-pair escapes are not valid TOML)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _render(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{_toml_str(k) if not re.fullmatch(r'[A-Za-z0-9_-]+', k) else k} = {_toml_value(v)}"
                  for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


BASE: dict[str, dict[str, Any]] = {
    "autoencoder": {"name": "identity", "channels": 3},
    "denoiser": {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1},
    "schedule": {"name": "scaled_linear"},
    "data": {"name": "shapes", "size": 16},
    "training": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "lr_decay": "cosine", "progress": False},
}

_scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False, width=32),
                     st.text(max_size=5))
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3), st.dictionaries(st.text("abc", min_size=1, max_size=3), _scalars, max_size=2))
_keys = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
_TRAINING_FIELDS = {f.name: f.type for f in attrs.fields(TrainingConfig)}


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, str, str | None, str | None]:
    """A config with one defect: (text, kind of defect, section, key)."""
    sections = {k: dict(v) for k, v in BASE.items()}
    defect = draw(st.sampled_from(["unknown_key", "wrong_type", "missing_section", "unknown_name", "unknown_section"]))
    if defect == "unknown_key":
        section = draw(st.sampled_from(sorted(sections)))
        key = draw(_keys.filter(lambda k: k not in _TRAINING_FIELDS and k not in
                                {"name", "channels", "layout", "scaling_factor", "shift_factor", "size",
                                 "length", "seed", "colors", "shapes", "positions", "exclude", "supersample",
                                 "cache_latents", "cache_dir", "cache_flip", "kind"}
                                and not k.startswith("num_train") and k not in _UNET_KEYS and k not in _SCHEDULE_KEYS))
        sections[section][key] = draw(_values)
        return _render(sections), defect, section, key
    if defect == "wrong_type":
        key = draw(st.sampled_from(["max_steps", "batch_size", "lr", "lr_decay", "progress", "betas", "seed", "csv"]))
        bad = {
            "max_steps": st.one_of(st.text(max_size=3), st.booleans(), st.floats(0.1, 9.9)),
            "batch_size": st.one_of(st.text(max_size=3), st.booleans(), st.lists(st.integers(), max_size=2)),
            "lr": st.one_of(st.text(max_size=3), st.booleans()),
            "lr_decay": st.one_of(st.text(max_size=6).filter(lambda s: s not in ("constant", "cosine", "linear")), st.integers()),
            "progress": st.one_of(st.integers(), st.text(max_size=3)),
            "betas": st.one_of(st.lists(st.floats(0, 0.5), max_size=1), st.lists(st.floats(0, 0.5), min_size=3, max_size=4), st.text(max_size=2)),
            "seed": st.one_of(st.floats(0.5, 3.5), st.text(max_size=3)),
            "csv": st.one_of(st.integers(), st.floats(0, 1)),
        }[key]
        sections["training"][key] = draw(bad)
        return _render(sections), defect, "training", key
    if defect == "missing_section":
        section = draw(st.sampled_from(sorted(sections)))
        del sections[section]
        return _render(sections), defect, None, None
    if defect == "unknown_name":
        section = draw(st.sampled_from(["autoencoder", "denoiser", "schedule", "data"]))
        sections[section]["name"] = draw(st.one_of(st.text(max_size=8).filter(
            lambda s: s not in {"identity", "kl", "vq", "unet", "dit", "cosine", "edm", "linear", "scaled_linear",
                                "shapes", "digits", "image_folder", "photo_crops", "latent_cache"}), st.integers()))
        return _render(sections), defect, section, "name"
    name = draw(_keys.filter(lambda k: k not in {"autoencoder", "denoiser", "conditioner", "schedule", "model", "data", "training"}))
    sections[name] = {"x": 1}
    return _render(sections), defect, None, None


_UNET_KEYS = {"in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
              "attention_resolutions", "num_heads", "num_head_channels", "transformer_depth",
              "transformer_depth_middle", "crossattn_dim", "vector_dim", "dropout",
              "use_scale_shift_norm", "use_spatial_transformer", "use_linear_in_transformer",
              "conv_resample", "norm_groups", "use_checkpoint", "preset"}
_SCHEDULE_KEYS = {"beta_start", "beta_end", "rescale_zero_terminal_snr", "timestep_spacing", "clip_sample"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=malformed())
def test_malformed_configs_always_give_config_error(pm: PluginManager, case: tuple[str, str, str | None, str | None]) -> None:
    text, defect, section, key = case
    try:
        loads_config(text, path="fuzz.toml", manager=pm)
    except ConfigError as err:
        message = str(err)
        assert message.startswith("fuzz.toml")
        if key is not None and section is not None:
            assert err.line == find_line(text, section, key), (defect, message)
            assert err.line is not None
            assert repr(key) in message or f"{key} " in message or "name" in message
        return
    raise AssertionError(f"no ConfigError for a {defect} defect:\n{text}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=120))
def test_arbitrary_text_gives_config_error_or_a_config(pm: PluginManager, text: str) -> None:
    try:
        loads_config(text, manager=pm)
    except ConfigError:
        pass


# ----------------------------------------------------------------------- building


def test_build_model_and_dataset_then_train_one_step(tmp_path: Path, pm: PluginManager) -> None:
    text = VALID.replace("max_steps = 2", f"max_steps = 1\noutput_dir = {json.dumps(str(tmp_path))}")
    cfg = loads_config(text, manager=pm)
    model = build_model(cfg, manager=pm)
    from latentkit.diffusion import LatentDiffusion

    assert isinstance(model, LatentDiffusion)
    # composition keys filled in from the autoencoder and the conditioner
    assert model.denoiser.in_channels == 3 and model.denoiser.out_channels == 3
    assert model.denoiser.conditioning_spec.vector_dim == 16
    dataset = build_dataset(cfg, model, manager=pm)
    assert len(dataset) == 16
    trainer = Trainer(model, dataset, cfg.training, plugin_manager=pm)
    metrics = trainer.fit()
    assert math.isfinite(metrics["loss"]) and {"mse_target", "sigma"} <= set(metrics)
    # a second config picks the trained denoiser up from the run directory
    reloaded = build_model(loads_config(text.replace('name = "unet"', f'name = "unet"\nweights_from = {json.dumps(str(tmp_path))}'),
                                        manager=pm), manager=pm)
    for k, v in model.denoiser.state_dict().items():
        assert torch.equal(reloaded.denoiser.state_dict()[k], v)
    bad = loads_config(text.replace('name = "unet"', 'name = "unet"\nweights_from = "/nonexistent"'), manager=pm)
    with pytest.raises(ConfigError, match=r"\[denoiser\] weights_from: no weights found"):
        build_model(bad, manager=pm)


def test_model_section_errors_point_at_their_line(pm: PluginManager) -> None:
    text = VALID.replace('parameterization = "eps"', 'parametrization = "eps"')
    cfg = loads_config(text, manager=pm)  # [model] keys are checked when the model is built
    with pytest.raises(ConfigError, match=r"\[model\] unknown key 'parametrization'.*Did you mean 'parameterization'") as info:
        build_model(cfg, manager=pm)
    assert info.value.line == _line_of(text, "parametrization")


def test_autoencoder_config_trains_with_discriminator(tmp_path: Path, pm: PluginManager) -> None:
    text = """
[model]
kind = "autoencoder"
disc_start = 0
disc_num_layers = 2

[autoencoder]
name = "kl"
config = "f4"
base_channels = 8
channel_multipliers = [1, 2]
num_res_blocks = 1
norm_num_groups = 4
latent_channels = 4

[data]
name = "photo_crops"
size = 32
length = 4
photos = ["astronaut"]

[training]
max_steps = 1
batch_size = 2
sample_every = 1
sample_count = 2
progress = false
"""
    cfg = loads_config(text + f"output_dir = {json.dumps(str(tmp_path))}\n", manager=pm)
    model = build_model(cfg, manager=pm)
    assert list(model.optimizer_names) == ["autoencoder", "discriminator"]
    dataset = build_dataset(cfg, model, manager=pm)
    disc_before = [p.detach().clone() for p in model.discriminator.parameters()]
    metrics = Trainer(model, dataset, cfg.training, plugin_manager=pm).fit()
    # both optimizers stepped: the autoencoder's loss and the discriminator's (disc_start = 0)
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["loss/discriminator"])
    assert {"rec_loss", "kl_loss", "discriminator/disc_loss"} <= set(metrics)
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, model.discriminator.parameters()))
    assert (tmp_path / "samples" / "step_00000001.png").exists()  # inputs next to reconstructions


# ----------------------------------------------------------------------- [model] loss = "module:attr"

CUSTOM_LOSS = """\
[model]
kind = "autoencoder"
loss = "custom_losses:L1Loss"
kl_weight = 1e-3

[autoencoder]
name = "kl"
config = "f4"
base_channels = 8
channel_multipliers = [1, 2]
num_res_blocks = 1
norm_num_groups = 4
latent_channels = 4

[data]
name = "shapes"
size = 16
length = 4

[training]
max_steps = 1
batch_size = 2
progress = false
"""


def test_autoencoder_config_with_a_loss_from_any_package_trains_and_reloads(tmp_path: Path, pm: PluginManager) -> None:
    import custom_losses
    from latentkit.experiment import RUN_CONFIG, load_run

    text = CUSTOM_LOSS + f"output_dir = {json.dumps(str(tmp_path))}\n"
    cfg = loads_config(text, manager=pm)
    assert cfg.model.loss == "custom_losses:L1Loss" and cfg.model.options == {"kl_weight": 1e-3}
    model = build_model(cfg, manager=pm)
    assert type(model) is custom_losses.L1Loss and model.kl_weight == 1e-3
    assert type(model.autoencoder).__name__ == "KLAutoencoder"
    dataset = build_dataset(cfg, model, manager=pm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = Trainer(model, dataset, cfg.training, plugin_manager=pm).fit()
    assert math.isfinite(metrics["loss"]) and {"l1", "kl"} <= set(metrics)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a run of it loads back (as `latentkit eval` / `sample` do) into the same loss model
    (tmp_path / RUN_CONFIG).write_text(text)
    reloaded, _ = load_run(tmp_path, ema=False)
    assert type(reloaded) is custom_losses.L1Loss
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v.cpu())


def test_loss_factory_function_takes_the_keywords_of_the_class_it_returns(pm: PluginManager) -> None:
    import custom_losses

    text = CUSTOM_LOSS.replace(":L1Loss", ":make_l1_loss").replace("kl_weight = 1e-3", "scale = 2.0")
    model = build_model(loads_config(text, manager=pm), manager=pm)
    assert type(model) is custom_losses.L1Loss and model.scale == 2.0
    err = _error(text.replace("scale = 2.0", "scael = 2.0"), pm)
    assert re.search(r"\[model\] unknown key 'scael' for make_l1_loss; allowed keys: kind, loss, "
                     r"data_key, kl_weight, scale\. Did you mean 'scale'", str(err)), str(err)


@pytest.mark.parametrize(
    ("old", "new", "needle", "expect"),
    [
        ('loss = "custom_losses:L1Loss"', "loss = 3", "loss =",
         r"\[model\] loss: expected a string 'module:attr' naming a training loss, got 3 \(int\)"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses.L1Loss"', "loss =",
         r"\[model\] loss: expected an import path 'module:attr' .*got 'custom_losses\.L1Loss'"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses:"', "loss =", r"expected an import path"),
        ('loss = "custom_losses:L1Loss"', 'loss = "no_such_package_lk.losses:L1Loss"', "loss =",
         r"\[model\] loss: expected an importable module 'no_such_package_lk\.losses' .*"
         r"importing it failed: No module named 'no_such_package_lk'"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses:L1Los"', "loss =",
         r"\[model\] loss: expected 'custom_losses' to have an attribute 'L1Los' .*found none; its "
         r"public callables: HalfGAN, L1Loss, .*plain_object\. Did you mean 'L1Loss'"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses:L1Loss.nope"', "loss =",
         r"expected 'custom_losses:L1Loss' to have an attribute 'nope'"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses:NOT_CALLABLE"', "loss =",
         r"expected 'custom_losses:NOT_CALLABLE' to be a class or function .*found 3 \(int\)"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses:NoAutoencoder"', "loss =",
         r"expected 'custom_losses:NoAutoencoder' to take an 'autoencoder' keyword parameter.*"
         r"its parameters: \(model: 'nn\.Module'\)"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses:NoLossMethod"', "loss =",
         r"to have a loss\(batch\) method, which the Trainer calls every step"),
        ('loss = "custom_losses:L1Loss"', 'loss = "custom_losses:NotAModule"', "loss =",
         r"expected 'custom_losses:NotAModule' to be a torch\.nn\.Module subclass"),
        ("kl_weight = 1e-3", "kl_weigth = 1e-3", "kl_weigth",
         r"\[model\] unknown key 'kl_weigth' for L1Loss; allowed keys: kind, loss, data_key, kl_weight, "
         r"scale\. Did you mean 'kl_weight'"),
        ("kl_weight = 1e-3", 'kl_weight = "big"', "kl_weight", r"\[model\] kl_weight must be number, got 'big'"),
        ("kl_weight = 1e-3", "autoencoder = 1", "autoencoder =", r"\[model\] unknown key 'autoencoder' for L1Loss"),
    ],
)
def test_loss_errors_are_found_when_the_config_is_loaded(pm: PluginManager, old: str, new: str, needle: str,
                                                         expect: str) -> None:
    text = CUSTOM_LOSS.replace(old, new, 1)
    err = _error(text, pm)
    assert re.search(expect, str(err)), str(err)
    assert err.section == "model" and err.line == _line_of(text, needle), (err.line, str(err))


def test_a_loss_module_that_fails_to_import_is_a_config_error(tmp_path: Path, pm: PluginManager,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lk_broken_loss.py").write_text('raise RuntimeError("boom at import")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lk_broken_loss", raising=False)
    err = _error(CUSTOM_LOSS.replace("custom_losses:L1Loss", "lk_broken_loss:L1Loss"), pm)
    assert "importing it failed: RuntimeError: boom at import" in str(err) and err.key == "loss"


@pytest.mark.parametrize("kind", ["diffusion", "stable_diffusion"])
def test_loss_is_only_valid_for_autoencoder_training(pm: PluginManager, kind: str) -> None:
    text = VALID.replace('parameterization = "eps"', f'kind = "{kind}"\nloss = "custom_losses:L1Loss"')
    err = _error(text, pm)
    assert f"[model] loss is only valid with kind = 'autoencoder' (a training loss wrapping the autoencoder); " \
           f"here kind = '{kind}'" in str(err)
    assert err.line == _line_of(text, "loss =")
    cfg = loads_config(VALID, manager=pm)
    bad = attrs.evolve(cfg, model=attrs.evolve(cfg.model, loss="custom_losses:L1Loss"))
    with pytest.raises(ConfigError, match=r"loss is only valid with kind = 'autoencoder'"):
        build_model(bad, manager=pm)


@pytest.mark.parametrize(
    ("loss", "option", "expect"),
    [
        ("plain_object", "", r"expected 'custom_losses:plain_object' to build a torch\.nn\.Module .*found a value of type object"),
        ("HalfGAN", "", r"HalfGAN has optimizer_names but no parameters_for; the Trainer needs both"),
        ("NeedsTarget", "", r"expected NeedsTarget\.loss to accept the Trainer's call loss\(batch\); its "
                            r"signature \(batch.*target.*\) does not: missing a required argument: 'target'"),
        ("L1Loss", "scale = -1.0", r"\[model\] cannot create L1Loss \(loss = 'custom_losses:L1Loss'\): "
                                   r"L1Loss: scale must be > 0, got -1\.0"),
    ],
)
def test_a_built_loss_the_trainer_cannot_train_is_refused(pm: PluginManager, loss: str, option: str,
                                                          expect: str) -> None:
    text = CUSTOM_LOSS.replace(":L1Loss", f":{loss}").replace("kl_weight = 1e-3", option)
    cfg = loads_config(text, path="exp.toml", manager=pm)  # what only the built object shows
    with pytest.raises(ConfigError, match=expect) as info:
        build_model(cfg, manager=pm)
    needle = option.split(" ")[0] if option else "loss ="
    assert info.value.line == _line_of(text, needle) and str(info.value).startswith("exp.toml:")


def test_unchecked_loading_defers_the_import_to_build_model(pm: PluginManager) -> None:
    text = CUSTOM_LOSS.replace("custom_losses:L1Loss", "no_such_package_lk:L1Loss")
    cfg = loads_config(text, manager=pm, check_components=False)
    assert cfg.model.loss == "no_such_package_lk:L1Loss"
    with pytest.raises(ConfigError, match=r"\[model\] loss: expected an importable module") as info:
        build_model(cfg, manager=pm)
    assert info.value.line == _line_of(text, "loss =")
    with pytest.raises(ConfigError, match=r"\[model\] loss: expected an import path 'module:attr'"):
        loads_config(text.replace('"no_such_package_lk:L1Loss"', '"not a path"'), manager=pm,
                     check_components=False)


EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_configs_load_and_build(path: Path, pm: PluginManager) -> None:
    # Configs for the plugin distributions (plugins/) need them installed; with them, their
    # components come in through entry points like any third party's.
    plugin = {"video": "latentkit_video", "volume": "latentkit_volume"}.get(path.stem.split("_")[0])
    if plugin is not None:
        pytest.importorskip(plugin, reason=f"{path.name} needs the {plugin} plugin distribution")
        pm = PluginManager()
    cfg = load_config(path, manager=pm)
    if any(getattr(cfg, s) is not None and getattr(cfg, s).weights_from for s in ("autoencoder", "denoiser")):
        return  # needs the weights of an earlier run
    model = build_model(cfg, manager=pm)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
