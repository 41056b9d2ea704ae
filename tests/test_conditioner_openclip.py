"""openclip_text: tokenizer offline, layers, pooled vector against open_clip's own forward,
local weights, frozen / trainable, dropout rate and input errors."""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from latentkit.conditioners.openclip_text import OpenCLIPTextConditioner, build_openclip_text_tower
from latentkit.errors import ShapeError

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}
CAPTIONS = ["a photo of a cat", "an astronaut riding a horse", ""]

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded; on a shared CPU extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)



def tiny(**kw: object) -> OpenCLIPTextConditioner:
    kw.setdefault("text_cfg", {"layers": 3})
    return OpenCLIPTextConditioner("tiny", **kw)  # type: ignore[arg-type]


def tiny_clip() -> open_clip.CLIP:
    """A full open_clip CLIP model (text + a tiny vision tower) with the tiny text config."""
    torch.manual_seed(0)
    return open_clip.CLIP(
        embed_dim=24,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        text_cfg=dict(TINY_TEXT),
    ).eval()


def test_tokenizer_works_offline_with_clip_bpe() -> None:
    cond = tiny()
    tokens = cond.tokenize(["a photo", ""])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    sot, eot = 49406, 49407  # CLIP's start / end of text ids
    assert tokens[1, :3].tolist() == [sot, eot, 0]
    assert tokens[0, 0] == sot and tokens[0, 3] == eot and tokens[0, 1:3].ne(0).all()
    ref = open_clip.get_tokenizer("ViT-B-32")(["a photo", ""])
    assert torch.equal(tokens, ref)


def test_named_model_builds_only_the_text_tower() -> None:
    tower, resolved = build_openclip_text_tower("ViT-H-14", text_cfg={"layers": 1, "width": 64, "heads": 1})
    assert type(tower).__name__ == "TextTransformer"
    assert not any("visual" in k for k in tower.state_dict())
    assert resolved["embed_dim"] == 1024  # the model's own projection width
    cond = OpenCLIPTextConditioner("ViT-L-14-quickgelu", text_cfg={"layers": 1, "width": 32, "heads": 1},
                                   outputs="both")
    assert isinstance(cond.text.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert cond.output_spec.crossattn_dim == 32 and cond.output_spec.vector_dim == 768
    with pytest.raises(ValueError, match=r"unknown model_name 'ViT-H-15'.*ViT-H-14"):
        OpenCLIPTextConditioner("ViT-H-15")
    with pytest.raises(ValueError, match="text_cfg key"):
        OpenCLIPTextConditioner("tiny", text_cfg={"depth": 2})
    with pytest.raises(ValueError, match="layer"):
        tiny(layer=3)


def test_matches_open_clip_forward_and_weights_from_a_clip_checkpoint(tmp_path: Path) -> None:
    model = tiny_clip()
    path = tmp_path / "open_clip_tiny.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    cond = tiny(weights=path, outputs="both", embed_dim=24).eval()
    tokens = open_clip.SimpleTokenizer()(CAPTIONS)
    out = cond({"caption": CAPTIONS})
    with torch.no_grad():
        # pooled vector == CLIP.encode_text (unnormalised)
        torch.testing.assert_close(out.vector, model.encode_text(tokens), atol=1e-5, rtol=1e-5)
        # last-layer tokens == open_clip's TextTransformer token output (after ln_final)
        tower, _ = build_openclip_text_tower("tiny", text_cfg={"layers": 3}, embed_dim=24)
        tower.load_state_dict(cond.text.state_dict())
        tower.output_tokens = True
        pooled, ref_tokens = tower.eval()(tokens)
    torch.testing.assert_close(out.crossattn, ref_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.vector, pooled, atol=1e-5, rtol=1e-5)


def test_penultimate_layer_is_sd2_formula_and_differs_from_last() -> None:
    cond = tiny(layer="penultimate").eval()
    last = tiny(layer="last").eval()
    last.load_state_dict(cond.state_dict())
    text = cond.text
    tokens = cond.tokenize(CAPTIONS)
    with torch.no_grad():
        # SD 2.x FrozenOpenCLIPEmbedder: all blocks but the last, then ln_final
        x = text.token_embedding(tokens) + text.positional_embedding
        for block in text.transformer.resblocks[:-1]:
            x = block(x, attn_mask=text.attn_mask)
        ref = text.ln_final(x)
        pen = cond({"caption": CAPTIONS}).crossattn
        torch.testing.assert_close(pen, ref, atol=1e-5, rtol=1e-5)
        no_norm = tiny(layer=-2, final_norm=False)
        no_norm.load_state_dict(cond.state_dict())
        torch.testing.assert_close(no_norm({"caption": CAPTIONS}).crossattn, x, atol=1e-5, rtol=1e-5)
        assert (last({"caption": CAPTIONS}).crossattn - pen).abs().max() > 1e-3


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    src = tiny(outputs="both")
    path = tmp_path / f"text{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    dst = tiny(outputs="both", weights=path)
    other = tiny(outputs="both")
    batch = {"caption": CAPTIONS}
    a, b, c = src(batch), dst(batch), other(batch)
    torch.testing.assert_close(a.crossattn, b.crossattn)
    torch.testing.assert_close(a.vector, b.vector)
    assert (a.vector - c.vector).abs().max() > 1e-3  # a fresh random tower differs


def test_weights_in_a_prefixed_checkpoint_and_bad_weights(tmp_path: Path) -> None:
    src = tiny()
    nested = {f"cond_stage_model.model.{k}": v for k, v in src.text.state_dict().items()}
    nested["model.diffusion_model.x"] = torch.zeros(1)
    dst = tiny()
    dst.load_weights(nested)
    torch.testing.assert_close(dst({"caption": ["x"]}).crossattn, src({"caption": ["x"]}).crossattn)
    wide = OpenCLIPTextConditioner("tiny", text_cfg={"layers": 3, "width": 48})
    with pytest.raises(ValueError, match=r"expected \(49408, 32\), found \(49408, 48\)"):
        dst.load_weights(wide.state_dict())
    partial = {k: v for k, v in src.state_dict().items() if "resblocks.2" not in k}
    with pytest.raises(ValueError, match=r"resblocks\.2"):
        dst.load_weights(partial)
    with pytest.raises(ValueError, match="no open_clip text tower"):
        dst.load_weights({"foo": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        tiny(weights=tmp_path / "missing.safetensors")


def test_each_caption_changes_the_output_and_null_is_empty_prompt() -> None:
    cond = tiny(outputs="both", null_prompt="")
    out = cond({"caption": ["a cat", "a dog", "a cat"]})
    assert (out.crossattn[0] - out.crossattn[1]).abs().max() > 1e-4
    assert (out.vector[0] - out.vector[1]).abs().max() > 1e-4
    torch.testing.assert_close(out.crossattn[0], out.crossattn[2])
    null = cond.null({"caption": ["a cat", "a dog"]})
    empty = cond({"caption": [""]})
    torch.testing.assert_close(null.crossattn, empty.crossattn.expand(2, -1, -1))
    torch.testing.assert_close(null.vector, empty.vector.expand(2, -1))


def test_dropout_uses_the_null_prompt_at_the_configured_rate() -> None:
    n, p = 600, 0.3
    cond = tiny(dropout=p, outputs="vector")
    captions = [f"caption number {i}" for i in range(n)]
    with torch.no_grad():
        out = cond.forward_with_dropout({"caption": captions}, generator=torch.Generator().manual_seed(0))
        empty = cond({"caption": [""]}).vector[0]
    dropped = torch.isclose(out.vector, empty, atol=1e-6).all(1)
    sd = math.sqrt(n * p * (1 - p))
    assert n * p - 5 * sd < int(dropped.sum()) < n * p + 5 * sd


def test_frozen_by_default_and_trainable_gets_gradients() -> None:
    frozen = tiny()
    assert not frozen.trainable
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.text.training  # dropout / norms of a frozen tower stay in eval mode
    out = frozen({"caption": ["a"]}).crossattn
    assert out.grad_fn is None
    trainable = tiny(trainable=True, outputs="both")
    o = trainable({"caption": ["a cat", "a dog"]})
    (o.crossattn.square().mean() + o.vector.square().mean()).backward()
    for name in ("token_embedding.weight", "transformer.resblocks.0.attn.in_proj_weight", "text_projection"):
        grad = dict(trainable.text.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize(("outputs", "layer", "final_norm"), [
    ("crossattn", "last", True), ("crossattn", "penultimate", False), ("both", "penultimate", True),
])
def test_every_trainable_parameter_gets_a_gradient(outputs: str, layer: str, final_norm: bool) -> None:
    """What the outputs never reach (the pooled projection without "vector", the blocks after
    ``layer``, ``ln_final`` without ``final_norm``) is frozen: DDP refuses trainable
    parameters without a gradient."""
    cond = tiny(trainable=True, outputs=outputs, layer=layer, final_norm=final_norm)
    assert cond.trainable
    o = cond({"caption": ["a cat", "a dog"]})
    sum(t.square().mean() for t in (o.crossattn, o.vector) if t is not None).backward()
    trainable = {n: p for n, p in cond.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values()), \
        [n for n, p in trainable.items() if p.grad is None]
    frozen = {n for n, p in cond.named_parameters() if not p.requires_grad}
    assert ("text.text_projection" in frozen) == (outputs == "crossattn")
    cond.set_trainable(False)
    assert not any(p.requires_grad for p in cond.parameters())


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    plain = tiny(trainable=True, outputs="both")
    ckpt = tiny(trainable=True, outputs="both", grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for model in (plain, ckpt):
        out = model({"caption": CAPTIONS})
        (out.crossattn.square().mean() + out.vector.square().mean()).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bad", ["a single string", [1, 2], torch.zeros(2, 77)])
def test_wrong_caption_input_is_a_shape_error(bad: object) -> None:
    with pytest.raises(ShapeError, match="caption"):
        tiny()({"caption": bad})
