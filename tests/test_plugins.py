"""The plugin system: discovery through real distributions, isolation of broken plugins,
strict mode, block lists, duplicates and overrides, lazy factories and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import latentkit
from latentkit.errors import PluginError, UnknownComponentError
from latentkit.plugins import PluginManager

GOOD_PLUGIN = '''
"""A third-party latentkit plugin: one sampler, one autoencoder."""
import torch
import latentkit
from latentkit.interfaces import Sampler


class MidpointSampler(Sampler):
    """Explicit midpoint rule on the probability-flow ODE (test plugin)."""

    def model_calls(self, steps):
        return 2 * steps

    def sample(self, denoise, x, sigmas, *, extra_args=None, callback=None, generator=None):
        extra_args = dict(extra_args or {})
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            d = (x - denoise(x, s, **extra_args)) / s
            s_mid = (s + s_next) / 2
            x_mid = x + d * (s_mid - s)
            d_mid = (x_mid - denoise(x_mid, s_mid, **extra_args)) / s_mid
            x = x + d_mid * (s_next - s)
        return x


@latentkit.hookimpl
def latentkit_register_samplers(registry):
    registry.add("demo_midpoint", MidpointSampler, summary="midpoint ODE sampler from a plugin")


@latentkit.hookimpl
def latentkit_register_autoencoders(registry):
    registry.add(
        "demo_identity",
        "latentkit.autoencoders.identity:IdentityAutoencoder",
        summary="lazily imported factory",
        tiny_config={"channels": 2},
    )
'''

BROKEN_PLUGIN = '''
raise ImportError("lk_broken needs a library that is not installed")
'''

RAISING_HOOK_PLUGIN = '''
import latentkit

@latentkit.hookimpl
def latentkit_register_samplers(registry):
    raise RuntimeError("registration exploded")
'''

DUPLICATE_PLUGIN = '''
import latentkit

@latentkit.hookimpl
def latentkit_register_autoencoders(registry):
    registry.add("demo_identity", "latentkit.autoencoders.identity:IdentityAutoencoder",
                 summary="same name again")
    registry.add("identity", "latentkit.autoencoders.identity:IdentityAutoencoder",
                 summary="replaces the built-in", override=True)
'''


def make_distribution(root: Path, dist: str, version: str, module: str, source: str, ep_name: str) -> None:
    """Write an installed-looking distribution: a module plus ``.dist-info`` with entry points."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[latentkit]\n{ep_name} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh site directory on sys.path holding a good and a broken distribution."""
    root = tmp_path / "site"
    root.mkdir()
    make_distribution(root, "lk-demo-plugin", "1.2.3", "lk_demo_plugin", GOOD_PLUGIN, "demo")
    make_distribution(root, "lk-broken", "0.1", "lk_broken", BROKEN_PLUGIN, "broken")
    monkeypatch.syspath_prepend(str(root))
    for var in ("LATENTKIT_DISABLE_PLUGIN_AUTOLOAD", "LATENTKIT_BLOCK_PLUGINS", "LATENTKIT_PLUGINS",
                "LATENTKIT_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    yield root
    for mod in ("lk_demo_plugin", "lk_broken", "lk_raising", "lk_dup"):
        sys.modules.pop(mod, None)


def test_builtins_come_from_the_latentkit_distribution() -> None:
    infos = PluginManager(autoload=False).list()
    assert infos, "built-in plugins registered nothing"
    assert {i.distribution for i in infos} == {"latentkit"}
    assert all(i.plugin.startswith("latentkit.") for i in infos)
    assert any(i.kind == "autoencoder" and i.name == "identity" for i in infos)


def test_third_party_distribution_is_discovered_listed_and_created(site: Path) -> None:
    manager = PluginManager()
    sampler = manager.get("sampler", "demo_midpoint")
    assert (sampler.plugin, sampler.distribution, sampler.version) == ("demo", "lk-demo-plugin", "1.2.3")
    ae_info = manager.get("autoencoder", "demo_identity")
    assert ae_info.distribution == "lk-demo-plugin"
    created = manager.create("sampler", "demo_midpoint")
    assert created.model_calls(5) == 10
    assert created.latentkit_name == ("sampler", "demo_midpoint")
    ae = manager.create("autoencoder", "demo_identity", channels=2)
    assert ae.latent_spec.channels == 2
    # The broken distribution is reported with its name and error, and hides nothing.
    [broken] = manager.broken
    assert (broken.plugin, broken.distribution, broken.stage) == ("broken", "lk-broken", "import")
    assert "not installed" in broken.error
    assert manager.get("autoencoder", "identity").distribution == "latentkit"


def test_cli_plugins_lists_third_party_and_broken(site: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-m", "latentkit.cli", "plugins"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "demo_midpoint" in out and "lk-demo-plugin 1.2.3" in out
    assert "broken plugins (1)" in out and "lk-broken" in out and "not installed" in out


def test_strict_mode_raises_on_broken_plugin(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginError, match="lk-broken"):
        PluginManager(strict=True).load()
    monkeypatch.setenv("LATENTKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="not installed"):
        PluginManager().load()


def test_disable_autoload_and_explicit_plugins(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    manager = PluginManager()
    assert "demo_midpoint" not in {i.name for i in manager.list("sampler")}
    assert manager.broken == []
    monkeypatch.setenv("LATENTKIT_PLUGINS", "lk_demo_plugin")
    assert "demo_midpoint" in {i.name for i in PluginManager().list("sampler")}


@pytest.mark.parametrize("blocked", ["broken", "lk-broken"])
def test_block_list_by_entry_point_or_distribution(site: Path, blocked: str) -> None:
    manager = PluginManager(block=[blocked])
    manager.load()
    assert manager.broken == []
    assert manager.get("sampler", "demo_midpoint")


def test_block_list_from_environment(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTKIT_BLOCK_PLUGINS", "demo, broken")
    manager = PluginManager()
    assert "demo_midpoint" not in {i.name for i in manager.list("sampler")}
    assert manager.broken == []


def test_raising_hook_is_isolated(site: Path) -> None:
    make_distribution(site, "lk-raising", "2.0", "lk_raising", RAISING_HOOK_PLUGIN, "raising")
    manager = PluginManager()
    assert manager.get("sampler", "demo_midpoint")
    broken = {b.plugin: b for b in manager.broken}
    assert broken["raising"].distribution == "lk-raising"
    assert broken["raising"].stage == "latentkit_register_samplers"
    assert "registration exploded" in broken["raising"].error


def test_duplicates_are_errors_unless_overridden(site: Path) -> None:
    make_distribution(site, "lk-dup", "0.3", "lk_dup", DUPLICATE_PLUGIN, "dup")
    manager = PluginManager()
    dup = [b for b in manager.broken if b.plugin == "dup"]
    assert len(dup) == 1 and "demo_identity" in dup[0].error and "override=True" in dup[0].error
    assert manager.get("autoencoder", "demo_identity").distribution == "lk-demo-plugin"
    assert manager.get("autoencoder", "identity").distribution == "lk-dup"
    with pytest.raises(PluginError, match="already registered"):
        PluginManager(strict=True, block=["broken"]).load()


def test_unknown_kind_and_name_suggest_close_matches() -> None:
    manager = PluginManager(autoload=False)
    with pytest.raises(UnknownComponentError, match="Did you mean 'autoencoder'"):
        manager.list("autoencoders")
    with pytest.raises(UnknownComponentError, match="Did you mean 'identity'") as err:
        manager.create("autoencoder", "identiy")
    assert "available: " in str(err.value)


def test_unknown_config_key_names_it_and_the_accepted_keys() -> None:
    with pytest.raises(TypeError, match=r"unknown config key\(s\) \['chanels'\]; accepted: \['channels'"):
        latentkit.create("autoencoder", "identity", chanels=3)


def test_in_process_plugin_registration_after_loading() -> None:
    class Plugin:
        @latentkit.hookimpl
        def latentkit_register_autoencoders(self, registry):  # type: ignore[no-untyped-def]
            registry.add("notebook_identity", lambda: latentkit.create("autoencoder", "identity"),
                         summary="from a notebook")

    manager = PluginManager(autoload=False)
    manager.load()
    manager.register(Plugin(), "notebook")
    info = manager.get("autoencoder", "notebook_identity")
    assert (info.plugin, info.distribution) == ("notebook", None)


def test_bad_factory_and_name_are_rejected_at_registration() -> None:
    class Plugin:
        @latentkit.hookimpl
        def latentkit_register_samplers(self, registry):  # type: ignore[no-untyped-def]
            registry.add("bad name!", object, summary="")

    manager = PluginManager(autoload=False)
    manager.register(Plugin(), "badname")
    manager.load()
    [broken] = manager.broken
    assert "component names" in broken.error


def test_lazy_factory_import_error_is_clear() -> None:
    class Plugin:
        @latentkit.hookimpl
        def latentkit_register_samplers(self, registry):  # type: ignore[no-untyped-def]
            registry.add("ghost", "lk_no_such_module:Ghost", summary="")

    manager = PluginManager(autoload=False)
    manager.register(Plugin(), "ghostly")
    with pytest.raises(PluginError, match="cannot import factory 'lk_no_such_module:Ghost'"):
        manager.create("sampler", "ghost")


def test_lifecycle_hooks_reach_plugins() -> None:
    seen = []

    class Logger:
        @latentkit.hookimpl
        def latentkit_train_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            seen.append((step, metrics["loss"]))

    # The built-in training plugins expect a real trainer; block them to fire the hook bare.
    manager = PluginManager(autoload=False, block=["latentkit.training.plugins"])
    manager.register(Logger(), "logger")
    manager.hook.latentkit_train_step_end(trainer=None, step=3, metrics={"loss": 0.5})
    assert seen == [(3, 0.5)]
