"""Stable Diffusion single-file checkpoints: detection, load -> save round trips, file formats,
EMA, dtypes and malformed inputs (issue 8). Parity with diffusers is in test_sd_parity.py,
peak memory in test_sd_memory.py."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentkit.interop import sd_keys
from latentkit.interop.stable_diffusion import (
    CheckpointError,
    StableDiffusionTextConditioner,
    detect_stable_diffusion,
    load_stable_diffusion,
    save_stable_diffusion,
    text_conditioner,
    to_ldm_state_dict,
)
from latentkit.testing.stable_diffusion import tiny_config, write_random_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "sd1": dict(family="sd1"),
    "sd2-v": dict(family="sd2"),
    "sd1-inpainting": dict(family="sd1", inpainting=True),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One random-weight reduced-width checkpoint per variant (with LDM's extra entries)."""
    root = tmp_path_factory.mktemp("sd")
    return {
        name: write_random_checkpoint(root / f"{name}.safetensors", tiny_config(**kw), seed=i)
        for i, (name, kw) in enumerate(VARIANTS.items())
    }


@pytest.fixture(scope="module")
def sd1_ema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("ema") / "ema.ckpt", tiny_config("sd1"), ema=True, seed=7
    )


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name", list(VARIANTS))
def test_detected_config_is_the_written_architecture(files: dict[str, Path], name: str) -> None:
    config = detect_stable_diffusion(files[name])
    assert config == tiny_config(**VARIANTS[name])
    assert config.name == name


def test_loaded_model_parts(files: dict[str, Path]) -> None:
    from latentkit.autoencoders.kl import KLAutoencoder
    from latentkit.conditioners.combined import CombinedConditioner
    from latentkit.denoisers.unet import UNetModel
    from latentkit.schedules.discrete import ScaledLinearSchedule

    model = load_stable_diffusion(files["sd1-inpainting"])
    assert isinstance(model.denoiser, UNetModel) and model.denoiser.in_channels == 9
    assert isinstance(model.autoencoder, KLAutoencoder)
    assert model.autoencoder.latent_spec.scaling_factor == pytest.approx(0.18215)
    assert isinstance(model.conditioner, CombinedConditioner)
    assert isinstance(model.schedule, ScaledLinearSchedule)
    assert model.parameterization.name == "eps"
    assert isinstance(text_conditioner(model), StableDiffusionTextConditioner)
    sd2 = load_stable_diffusion(files["sd2-v"])
    assert sd2.parameterization.name == "v"
    assert text_conditioner(sd2).layer_index == 1  # penultimate of 3 blocks


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(VARIANTS))
def test_load_save_reproduces_every_tensor(
    files: dict[str, Path], name: str, tmp_path: Path
) -> None:
    model = load_stable_diffusion(files[name])
    out = save_stable_diffusion(model, tmp_path / "again.safetensors")
    _tensors_equal(load_file(files[name]), load_file(out))
    # and load -> save -> load gives the same weights
    again = load_stable_diffusion(out)
    _tensors_equal(to_ldm_state_dict(model), to_ldm_state_dict(again))


def test_loaded_weights_are_views_of_the_mapped_file(files: dict[str, Path]) -> None:
    """safetensors tensors are assigned, not copied: parameters point into the file mapping
    (only the fused q, k, v of SD 1.x's text encoder are concatenated)."""
    from safetensors import safe_open

    model = load_stable_diffusion(files["sd1"])
    with safe_open(os.fspath(files["sd1"]), "pt") as fh:
        first = fh.get_tensor(sd_keys.UNET_PREFIX + "input_blocks.0.0.weight")
    param = model.denoiser.input_blocks[0][0].weight
    assert torch.equal(param, first)
    # the storage of a mapped tensor is not resizable, unlike one torch allocated itself
    assert not param.untyped_storage().resizable()
    assert torch.ones(1).untyped_storage().resizable()


def test_save_over_the_source_file_is_safe(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(files["sd1"].read_bytes())
    model = load_stable_diffusion(path)
    before = {k: v.clone() for k, v in to_ldm_state_dict(model).items()}
    save_stable_diffusion(model, path)  # written to a temp file, renamed over the mapped file
    _tensors_equal(before, to_ldm_state_dict(model))
    _tensors_equal(load_file(files["sd1"]), load_file(path))


def test_ckpt_nested_state_dict_and_global_step(tmp_path: Path) -> None:
    """A Lightning-style .ckpt (weights under "state_dict", global_step beside them): SD 2.x
    with global_step 875000 is the 512-base eps model."""
    src = write_random_checkpoint(tmp_path / "base.safetensors", tiny_config("sd2"), seed=3)
    state = load_file(src)
    ckpt = tmp_path / "v2-base.ckpt"
    torch.save({"state_dict": state, "global_step": 875000, "epoch": 3}, ckpt)
    model = load_stable_diffusion(ckpt)
    assert model.parameterization.name == "eps"
    assert "global_step" in model.stable_diffusion.prediction_type_reason
    assert load_stable_diffusion(ckpt, prediction_type="v_prediction").parameterization.name == "v"
    out = save_stable_diffusion(model, tmp_path / "out.ckpt")
    reread = torch.load(out, weights_only=True)
    assert reread["global_step"] == 875000
    _tensors_equal(state, reread["state_dict"])


def test_fp16_checkpoint_keeps_fp16_and_casts_on_request(tmp_path: Path) -> None:
    path = write_random_checkpoint(
        tmp_path / "half.safetensors", tiny_config("sd1"), dtype=torch.float16
    )
    model = load_stable_diffusion(path)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    full = load_stable_diffusion(path, dtype=torch.float32)
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    # a float32 model loaded from fp16 still saves the file's fp16 tensors exactly
    _tensors_equal(
        load_file(path), load_file(save_stable_diffusion(full, tmp_path / "out.safetensors"))
    )
    pruned = save_stable_diffusion(
        full, tmp_path / "fp32.safetensors", dtype=torch.float32, include_extra=False
    )
    stored = load_file(pruned)
    assert {v.dtype for v in stored.values()} == {torch.float32}
    assert "betas" not in stored and "prediction_type" not in stored


def test_ema_weights_when_asked_for(sd1_ema: Path, tmp_path: Path) -> None:
    raw = torch.load(sd1_ema, weights_only=True)["state_dict"]
    key = "input_blocks.1.0.in_layers.2.weight"
    plain = load_stable_diffusion(sd1_ema)
    ema = load_stable_diffusion(sd1_ema, prefer_ema=True)
    assert ema.stable_diffusion.unet_source == "ema"
    assert torch.equal(plain.denoiser.state_dict()[key], raw[sd_keys.UNET_PREFIX + key])
    assert torch.equal(ema.denoiser.state_dict()[key], raw[sd_keys.ema_key(key)])
    assert not torch.equal(raw[sd_keys.UNET_PREFIX + key], raw[sd_keys.ema_key(key)])
    # both write back the whole file: the EMA UNet goes back under model_ema.*
    for model, name in ((plain, "plain.ckpt"), (ema, "ema.ckpt")):
        out = torch.load(save_stable_diffusion(model, tmp_path / name), weights_only=True)[
            "state_dict"
        ]
        _tensors_equal(raw, out)
    # a pruned save of the EMA model puts the EMA weights under model.diffusion_model.*
    pruned = load_file(
        save_stable_diffusion(ema, tmp_path / "ema-only.safetensors", include_extra=False)
    )
    assert torch.equal(pruned[sd_keys.UNET_PREFIX + key], raw[sd_keys.ema_key(key)])
    assert not any(k.startswith("model_ema") for k in pruned)


def test_prefer_ema_without_ema_warns(files: dict[str, Path]) -> None:
    with pytest.warns(UserWarning, match="no EMA weights"):
        model = load_stable_diffusion(files["sd1"], prefer_ema=True)
    assert model.stable_diffusion.unet_source == "model"


# ----------------------------------------------------------------------------- prompts


def test_sd1_prompts_pad_with_end_of_text_sd2_with_zero(files: dict[str, Path]) -> None:
    sd1 = text_conditioner(load_stable_diffusion(files["sd1"])).tokenize(["a red house", ""])
    sd2 = text_conditioner(load_stable_diffusion(files["sd2-v"])).tokenize(["a red house", ""])
    assert sd1.shape == sd2.shape == (2, 77)
    assert sd1[0, :5].tolist() == sd2[0, :5].tolist() == [49406, 320, 736, 1212, 49407]
    assert bool((sd1[0, 5:] == 49407).all()) and bool((sd2[0, 5:] == 0).all())
    assert sd1[1, :2].tolist() == [49406, 49407] and bool((sd1[1, 2:] == 49407).all())


def test_text_to_image_and_inpainting_run(files: dict[str, Path]) -> None:
    model = load_stable_diffusion(files["sd1"])
    images = model.sample(
        {"caption": ["a cat"]}, steps=2, guidance_scale=5.0, seed=0, latent_size=(8, 8)
    )
    assert images.shape == (1, 3, 16, 16) and bool(torch.isfinite(images).all())
    inpaint = load_stable_diffusion(files["sd1-inpainting"])
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out = inpaint.inpaint(image, mask, batch={"caption": ["a dog"]}, steps=2, seed=0)
    assert out.shape == image.shape and bool(torch.isfinite(out).all())


# ----------------------------------------------------------------------------- malformed files


def _write_variant(
    tmp_path: Path, state: dict[str, torch.Tensor], name: str = "bad.safetensors"
) -> Path:
    path = tmp_path / name
    save_file(state, path)
    return path


def test_missing_keys_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(files["sd1"])
    gone = [
        sd_keys.UNET_PREFIX + "middle_block.1.proj_out.weight",
        sd_keys.VAE_PREFIX + "decoder.conv_out.bias",
    ]
    for key in gone:
        del state[key]
    with pytest.raises(CheckpointError, match="2 missing key") as info:
        load_stable_diffusion(_write_variant(tmp_path, state))
    assert all(key in str(info.value) for key in gone)


def test_partial_checkpoint_names_the_absent_part(files: dict[str, Path], tmp_path: Path) -> None:
    state = {
        k: v for k, v in load_file(files["sd1"]).items() if not k.startswith(sd_keys.VAE_PREFIX)
    }
    with pytest.raises(CheckpointError, match=r"incomplete.*autoencoder \(first_stage_model"):
        load_stable_diffusion(_write_variant(tmp_path, state))
    unet_only = {
        k: v for k, v in load_file(files["sd1"]).items() if k.startswith(sd_keys.UNET_PREFIX)
    }
    with pytest.raises(CheckpointError, match="no weights for the autoencoder"):
        load_stable_diffusion(_write_variant(tmp_path, unet_only, "unet.safetensors"))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion"):
        load_stable_diffusion(
            _write_variant(tmp_path, {"weight": torch.zeros(3)}, "other.safetensors")
        )


def test_extra_keys_are_named_or_kept_when_not_strict(
    files: dict[str, Path], tmp_path: Path
) -> None:
    state = load_file(files["sd1"])
    state["model.diffusion_model.input_blocks.99.0.weight"] = torch.zeros(2)
    state["lora_unet_down.alpha"] = torch.ones(1)
    path = _write_variant(tmp_path, state)
    with pytest.raises(CheckpointError, match="2 unexpected key") as info:
        load_stable_diffusion(path)
    assert "input_blocks.99.0.weight" in str(info.value) and "lora_unet_down.alpha" in str(
        info.value
    )
    with pytest.warns(UserWarning, match="unknown key"):
        model = load_stable_diffusion(path, strict=False)
    _tensors_equal(state, load_file(save_stable_diffusion(model, tmp_path / "kept.safetensors")))


def test_misshapen_keys_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(files["sd1"])
    key = sd_keys.UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    state[key] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError, match="misshapen") as info:
        load_stable_diffusion(_write_variant(tmp_path, state))
    assert key in str(info.value) and "(32, 32)" in str(info.value) and "(5, 5)" in str(info.value)


def test_truncated_files(files: dict[str, Path], tmp_path: Path) -> None:
    data = files["sd1"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_stable_diffusion(cut)
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="truncated"):
        load_stable_diffusion(tmp_path / "tiny.safetensors")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(files["sd1"])}, ckpt)
    raw = ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="unreadable torch checkpoint"):
        load_stable_diffusion(tmp_path / "cut.ckpt")
    with pytest.raises(FileNotFoundError):
        load_stable_diffusion(tmp_path / "absent.ckpt")


class _Exploit:
    """Pickles to a call of ``os.system`` that would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch_file = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, torch_file)
    assert zipfile.is_zipfile(torch_file)
    legacy = tmp_path / "evil-legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}, protocol=2))
    for path in (torch_file, legacy):
        with pytest.raises(CheckpointError, match=r"refused to unpickle.*nothing was executed"):
            load_stable_diffusion(path)
    assert not marker.exists()


def test_not_a_stable_diffusion_model_cannot_be_saved(tmp_path: Path) -> None:
    import latentkit
    from latentkit.diffusion import LatentDiffusion

    ae = latentkit.create("autoencoder", "identity", channels=4)
    den = latentkit.create(
        "denoiser",
        "unet",
        model_channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_resolutions=(),
        norm_groups=4,
        in_channels=4,
    )
    model = LatentDiffusion(ae, den)
    with pytest.raises(TypeError, match="'unet' denoiser and a 'kl' autoencoder"):
        save_stable_diffusion(model, tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_fine_tune_step_then_save_leaves_the_source_file_alone(tmp_path: Path, suffix: str) -> None:
    """Weights mapped from the file are private (copy-on-write): an optimizer step changes the
    model, not the file, and the saved file holds the updated weights."""
    path = write_random_checkpoint(tmp_path / f"base{suffix}", tiny_config("sd1"), seed=5)
    original = path.read_bytes()
    model = load_stable_diffusion(path, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    assert all(p.requires_grad for p in model.denoiser.parameters())
    assert not any(p.requires_grad for p in model.autoencoder.parameters())
    batch = {
        "image": torch.rand(2, 3, 16, 16) * 2 - 1,
        "caption": ["a red square", "a blue circle"],
    }
    loss = model.loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    assert path.read_bytes() == original
    out = save_stable_diffusion(model, tmp_path / f"tuned{suffix}")
    tuned = load_stable_diffusion(out)
    key = "out.2.weight"
    assert torch.equal(tuned.denoiser.state_dict()[key], model.denoiser.state_dict()[key])
    assert not torch.equal(
        tuned.denoiser.state_dict()[key], load_stable_diffusion(path).denoiser.state_dict()[key]
    )


def test_missing_architecture_key_is_named_with_its_prefix(
    files: dict[str, Path], tmp_path: Path
) -> None:
    state = load_file(files["sd2-v"])
    del state[sd_keys.UNET_PREFIX + "input_blocks.0.0.weight"]
    with pytest.raises(
        CheckpointError, match=r"'model\.diffusion_model\.input_blocks\.0\.0\.weight'"
    ):
        load_stable_diffusion(_write_variant(tmp_path, state))
