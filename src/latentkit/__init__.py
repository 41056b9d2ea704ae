"""latentkit: a plugin-based SDK for latent diffusion models.

The public package exports factories, queries and the shared types only; components live in
their kinds' subpackages and are created by name::

    import latentkit
    latentkit.list_components("sampler")
    ae = latentkit.create("autoencoder", "identity", channels=3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latentkit.composition import validate_composition
from latentkit.errors import (
    CompositionError,
    LatentkitError,
    PluginError,
    ShapeError,
    SpecError,
    UnknownComponentError,
)
from latentkit.hookspecs import hookimpl, hookspec
from latentkit.interfaces import (
    Autoencoder,
    Conditioner,
    Dataset,
    Denoiser,
    LatentDistribution,
    Sampler,
    Schedule,
)
from latentkit.plugins import create, get_plugin_manager, list_components, register_plugin
from latentkit.specs import Conditioning, ConditioningSpec, DataSpec, LatentSpec

if TYPE_CHECKING:
    from latentkit.diffusion import LatentDiffusion

__version__ = "0.1.0"

__all__ = [
    "Autoencoder",
    "CompositionError",
    "Conditioner",
    "Conditioning",
    "ConditioningSpec",
    "DataSpec",
    "Dataset",
    "Denoiser",
    "LatentDiffusion",
    "LatentDistribution",
    "LatentSpec",
    "LatentkitError",
    "PluginError",
    "Sampler",
    "Schedule",
    "ShapeError",
    "SpecError",
    "UnknownComponentError",
    "__version__",
    "create",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "list_components",
    "register_plugin",
    "validate_composition",
]


def __getattr__(name: str) -> Any:
    # LatentDiffusion pulls in the diffusion core; import it on first use only.
    if name == "LatentDiffusion":
        from latentkit.diffusion import LatentDiffusion

        return LatentDiffusion
    raise AttributeError(f"module 'latentkit' has no attribute {name!r}")
