"""Conditioners inside LatentDiffusion: composition check before any forward pass, binding,
and which parameters train (frozen encoders never, learned heads and trainable children yes)."""

from __future__ import annotations

import pytest
import torch

import latentkit


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded; on a shared CPU extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def conditioner() -> latentkit.Conditioner:
    return latentkit.create(
        "conditioner",
        "combined",
        conditioners=[
            {"name": "openclip_text", "config": {"model_name": "tiny", "outputs": "both"}, "dropout": 0.1},
            {"name": "timm_image", "config": {"model_name": "test_vit", "model_kwargs": {"img_size": 32},
                                              "outputs": "vector", "vector_dim": 8}},
            {"name": "class_label", "config": {"num_classes": 5, "embed_dim": 8}, "dropout": 0.1},
            {"name": "concat", "config": {"inputs": "inpainting", "latent_channels": 4}},
        ],
    )


def model(cond: latentkit.Conditioner, in_channels: int = 9) -> latentkit.LatentDiffusion:
    ae_info = next(i for i in latentkit.list_components("autoencoder") if i.name == "kl")
    ae = latentkit.create("autoencoder", "kl", **ae_info.tiny_config)
    den_info = next(i for i in latentkit.list_components("denoiser") if i.name == "unet")
    den = latentkit.create("denoiser", "unet", **{**den_info.tiny_config, "in_channels": in_channels,
                                                    "crossattn_dim": 32, "vector_dim": 48})
    return latentkit.LatentDiffusion(ae, den, cond, schedule=latentkit.create("schedule", "scaled_linear",
                                                                             num_train_timesteps=100))


def test_combined_conditioner_trains_exactly_its_trainable_parts() -> None:
    cond = conditioner()
    assert cond.output_spec == latentkit.ConditioningSpec(crossattn_dim=32, concat_channels=5, vector_dim=48)
    ldm = model(cond)
    text, image, label, concat = cond.conditioners
    with torch.no_grad():  # ADM-style zero-initialised output layers would block every gradient
        for p in ldm.denoiser.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    assert concat.autoencoder is ldm.autoencoder  # bound at construction
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
        "caption": ["a red house", "a cat"],
        "label": torch.tensor([1, 4]),
    }
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    batch.update(mask=mask, masked_image=batch["image"] * (1 - mask))
    ldm.loss(batch, generator=torch.Generator().manual_seed(1)).backward()
    trained = {id(p) for p in ldm.trainable_parameters()}
    assert not any(id(p) in trained for p in text.parameters())  # frozen text tower
    assert not any(id(p) in trained for p in image.encoder.parameters())  # frozen timm encoder
    assert all(id(p) in trained and p.grad.abs().sum() > 0 for p in image.vector_proj.parameters())
    assert label.embedding.weight.grad is not None and label.embedding.weight.grad.abs().sum() > 0
    assert not text.text.training and not image.encoder.training  # frozen parts stay in eval
    assert not any(k.startswith("conditioner.conditioners.3.") for k in ldm.state_dict())  # AE not twice


def test_composition_error_names_the_conditioner_numbers() -> None:
    with pytest.raises(latentkit.CompositionError, match="concat channels"):
        model(conditioner(), in_channels=8)
