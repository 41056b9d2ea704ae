"""Every component this distribution registers passes latentkit's conformance kit, exactly
as a third party would run it: one decorator over the registered (kind, name) pairs."""

from __future__ import annotations

import latentkit
from latentkit.testing import parametrize_with_checks

DIST = "latentkit-video"
CHECKED = ("autoencoder", "denoiser", "conditioner")


def _ours() -> list[tuple[str, str]]:
    return [(c.kind, c.name) for c in latentkit.list_components()
            if c.distribution == DIST and c.kind in CHECKED]


def test_registered_through_the_entry_point_under_our_distribution() -> None:
    found = {(c.kind, c.name): c for c in latentkit.list_components() if c.distribution == DIST}
    assert set(found) == {
        ("autoencoder", "framewise"), ("autoencoder", "causal_video"), ("denoiser", "video_unet"),
        ("conditioner", "first_frame"), ("dataset", "moving_shapes"), ("dataset", "video_folder"),
    }
    assert {c.plugin for c in found.values()} == {"video"}  # the entry-point name
    assert not [b for b in latentkit.get_plugin_manager().broken if b.distribution == DIST]


@parametrize_with_checks(_ours())
def test_conformance(component, check) -> None:
    check(component)
