"""The experiment layer: a TOML config -> checked schema -> components, model and dataset ->
a training run -> a loaded run. Each job is one module:

* :mod:`~latentkit.experiment.schema`: the frozen attrs classes of a config;
* :mod:`~latentkit.experiment.parse`: TOML with line numbers, type and option checks;
* :mod:`~latentkit.experiment.build`: components, the registered model, the dataset;
* :mod:`~latentkit.experiment.run`: train from a config into a run directory, load a run.

The command line, the quickstart and the plugin distributions use this API, and nothing
else, to get from a config to a trained model::

    from latentkit.experiment import load_config, train, load_run
    trainer = train("examples/configs/shapes_autoencoder.toml", overrides={"output_dir": "runs/ae"})
    model, config = load_run("runs/ae")
"""

from __future__ import annotations

from latentkit.errors import ConfigError
from latentkit.experiment.build import build_component, build_dataset, build_model, create_dataset
from latentkit.experiment.parse import load_config, loads_config
from latentkit.experiment.run import (
    RUN_CONFIG,
    build_trainer,
    find_run_config,
    load_run,
    train,
    with_overrides,
)
from latentkit.experiment.schema import ComponentConfig, DataConfig, ExperimentConfig, ModelConfig
from latentkit.experiment.source import find_line

__all__ = [
    "RUN_CONFIG",
    "ComponentConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "build_component",
    "build_dataset",
    "build_model",
    "build_trainer",
    "create_dataset",
    "find_line",
    "find_run_config",
    "load_config",
    "load_run",
    "loads_config",
    "train",
    "with_overrides",
]
