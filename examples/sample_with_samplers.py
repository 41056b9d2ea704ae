"""Sample one trained model with several samplers and guidance scales, side by side.

The model is the run written by examples/compose_and_train.py (rebuilt by its
``build_model`` and loaded with the run's EMA weights), or any run of ``latentkit train``
with a ``class_label`` or ``openclip_text`` conditioner (rebuilt from its ``config.toml``). The sampler is
picked by its registered name and the guidance scale is an argument of ``sample``: the model
itself does not change. Every image uses the same starting noise (``seed``), so the rows
differ only by the sampler and the columns only by the guidance.

    python examples/sample_with_samplers.py [RUN_DIR]
    LATENTKIT_EXAMPLE_TINY=1 python examples/sample_with_samplers.py RUN_DIR   # seconds
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from latentkit.experiment import load_run
from latentkit.samples import save_image_grid
from latentkit.training import load_weights

TINY = os.environ.get("LATENTKIT_EXAMPLE_TINY", "") == "1"
run = sys.argv[1] if len(sys.argv) > 1 else "runs/example-digits"
if (Path(run) / "config.toml").is_file():  # a `latentkit train` run
    model, _config = load_run(run)
else:  # a run of examples/compose_and_train.py: same composition, trained weights
    sys.path.insert(0, str(Path(__file__).parent))
    from compose_and_train import build_model

    model = build_model()
    model.load_state_dict(load_weights(Path(run) / "checkpoints"))  # EMA weights
    model.eval()

samplers = ["euler", "dpmpp_2m", "unipc", "ddim"] if not TINY else ["euler", "dpmpp_2m"]
guidances = [1.0, 2.0, 4.0] if not TINY else [1.0, 3.0]
steps = 4 if TINY else 20
keys = model.conditioner.input_keys if model.conditioner is not None else ()
batch = {"label": torch.tensor([7])} if "label" in keys else {"caption": ["a red circle at the top left"]}

images, captions = [], []
for sampler in samplers:
    for guidance in guidances:
        t0 = time.perf_counter()
        with torch.no_grad():
            x = model.sample(batch, sampler=sampler, steps=steps, guidance_scale=guidance, seed=0)
        images.append(x[0].clamp(-1, 1))
        captions.append(f"{sampler} g={guidance}")
        print(f"{sampler:>10}  guidance {guidance:3.1f}: {time.perf_counter() - t0:.2f} s")
path = save_image_grid(images, os.path.join(run, "samplers.png"), captions=captions, nrow=len(guidances))
print(f"grid: {path}")
