"""timm_image: pooled / token outputs, projections, null embedding, local weights,
frozen / trainable and input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from latentkit.conditioners.timm_image import TimmImageConditioner
from latentkit.errors import ShapeError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded; on a shared CPU extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def vit(**kw: object) -> TimmImageConditioner:
    kw.setdefault("model_kwargs", {"img_size": 32})
    return TimmImageConditioner("test_vit", **kw)  # type: ignore[arg-type]


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_vit_tokens_pooled_and_projection_shapes() -> None:
    cond = vit(outputs="both", crossattn_dim=24)
    assert cond.output_spec.crossattn_dim == 24 and cond.output_spec.vector_dim == 64
    out = cond({"image": images(2)})
    assert out.crossattn.shape == (2, 1 + 4, 24)  # class token + (32 / 16)^2 patches
    assert out.vector.shape == (2, 64)
    native = vit(outputs="crossattn")
    assert native.output_spec.crossattn_dim == 64 and native.output_spec.vector_dim is None


def test_outputs_equal_timm_features_of_the_normalised_image() -> None:
    cond = vit(outputs="both").eval()
    x = images(3, size=64)  # resized to the encoder's 32x32 input
    out = cond({"image": x})
    enc = cond.encoder
    ref_in = torch.nn.functional.interpolate((x + 1) / 2, size=(32, 32), mode="bilinear", antialias=True)
    mean = torch.tensor(enc.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(enc.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = enc.forward_features((ref_in - mean) / std)
        torch.testing.assert_close(out.crossattn, feats)
        torch.testing.assert_close(out.vector, enc.forward_head(feats, pre_logits=True))


def test_cnn_feature_map_becomes_tokens() -> None:
    cond = TimmImageConditioner("test_resnet", outputs="both", image_size=64, vector_dim=16)
    out = cond({"image": images(2, size=64)})
    fmap = cond.encoder.forward_features(cond.preprocess(images(2, size=64)))  # (B, C, H, W)
    assert out.crossattn.shape == (2, fmap.shape[2] * fmap.shape[3], fmap.shape[1])
    torch.testing.assert_close(out.crossattn[:, :, 0], fmap[:, 0].flatten(1))
    assert out.vector.shape == (2, 16)


def test_each_image_changes_the_output_and_null_is_zeros() -> None:
    cond = vit(outputs="both", crossattn_dim=8, dropout=0.5)
    x = images(2)
    out = cond({"image": torch.cat([x, x[:1]])})
    assert (out.vector[0] - out.vector[1]).abs().max() > 1e-4
    assert (out.crossattn[0] - out.crossattn[1]).abs().max() > 1e-4
    torch.testing.assert_close(out.vector[0], out.vector[2])
    null = cond.null({"image": x})
    assert null.crossattn.shape == (2, 5, 8) and null.vector.shape == (2, 64)
    assert null.crossattn.abs().sum() == 0 and null.vector.abs().sum() == 0
    with torch.no_grad():
        drop = cond.forward_with_dropout({"image": images(64)}, generator=torch.Generator().manual_seed(0))
    zero_rows = (drop.vector == 0).all(1)
    assert 0 < int(zero_rows.sum()) < 64
    assert torch.equal(zero_rows, (drop.crossattn == 0).all(2).all(1))  # whole item dropped


def test_frozen_encoder_trainable_projection_and_trainable_encoder() -> None:
    frozen = vit(outputs="both", crossattn_dim=8)
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    assert all(p.requires_grad for p in frozen.token_proj.parameters())
    assert frozen.trainable and not frozen.encoder_trainable  # the head trains, the encoder not
    frozen.train()
    assert not frozen.encoder.training
    out = frozen({"image": images(2)})
    (out.crossattn.sum() + out.vector.sum()).backward()
    assert frozen.token_proj.weight.grad is not None
    no_proj = vit(outputs="vector")
    assert not any(p.requires_grad for p in no_proj.parameters())  # nothing to train at all
    assert not no_proj.trainable
    trainable = vit(outputs="vector", trainable=True)
    trainable({"image": images(2)}).vector.square().sum().backward()
    grads = [p.grad for p in trainable.encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:3])
    assert trainable.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_local_weights_round_trip(tmp_path: Path) -> None:
    src = vit(outputs="both")
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, path)
    dst = vit(outputs="both", weights=path)
    x = images(2)
    torch.testing.assert_close(dst({"image": x}).vector, src({"image": x}).vector)
    other = vit(outputs="both")
    assert (other({"image": x}).vector - src({"image": x}).vector).abs().max() > 1e-4
    # a full classifier checkpoint (with head) loads too: timm drops the classifier
    full = timm.create_model("test_vit", img_size=32, num_classes=10)
    full.load_state_dict(src.encoder.state_dict(), strict=False)
    torch.save(full.state_dict(), tmp_path / "full.pth")
    dst2 = vit(outputs="vector", weights=tmp_path / "full.pth")
    torch.testing.assert_close(dst2({"image": x}).vector, src({"image": x}).vector)
    with pytest.raises(FileNotFoundError):
        vit(weights=tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 1, 32, 32), torch.zeros(2, 3, 32), torch.zeros(2, 3, 4, 32, 32), [[0.0]]]
)
def test_wrong_image_is_a_shape_error(bad: object) -> None:
    with pytest.raises(ShapeError, match="image"):
        vit()({"image": bad})


def test_unknown_model_and_custom_key() -> None:
    with pytest.raises(ValueError, match="no_such_model"):
        TimmImageConditioner("no_such_model")
    cond = vit(key="reference")
    assert cond.input_keys == ("reference",)
    assert "reference" in cond.example_batch(1)
    with pytest.raises(KeyError, match="reference"):
        cond({"image": images(1)})
