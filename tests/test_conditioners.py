"""Built-in conditioners: registry entries, class_label, size and combined.

openclip_text, timm_image and concat have their own files (test_conditioner_*.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import latentkit
from latentkit.conditioners.class_label import ClassLabelConditioner
from latentkit.conditioners.combined import CombinedConditioner
from latentkit.conditioners.concat import ConcatConditioner
from latentkit.conditioners.size import SizeConditioner, fourier_embedding
from latentkit.errors import ShapeError
from latentkit.interfaces import Conditioner
from latentkit.specs import Conditioning
from latentkit.testing import parametrize_with_checks

BUILTINS = ("class_label", "openclip_text", "timm_image", "concat", "size", "combined")

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded; on a shared CPU extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)



def binomial_bounds(n: int, p: float, z: float = 5.0) -> tuple[float, float]:
    """Count interval of a Binomial(n, p) at ``z`` standard deviations (false alarm < 1e-6)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


def shapes(cond: Conditioning) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in cond.items()}


# --------------------------------------------------------------------------- registry


def test_all_builtins_registered_with_tiny_config() -> None:
    infos = {i.name: i for i in latentkit.list_components("conditioner")}
    for name in BUILTINS:
        assert name in infos, name
        assert infos[name].tiny_config, f"{name} has no tiny_config"
        assert infos[name].distribution == "latentkit"


@pytest.mark.parametrize("name", BUILTINS)
def test_tiny_config_contract(name: str) -> None:
    """forward / null / forward_with_dropout match output_spec, are deterministic under a
    seeded generator, and item i does not depend on the rest of the batch."""
    info = next(i for i in latentkit.list_components("conditioner") if i.name == name)
    cond = latentkit.create("conditioner", name, **info.tiny_config)
    assert isinstance(cond, Conditioner)
    cond.eval()
    batch = cond.example_batch(4, latent_size=(8, 8), generator=torch.Generator().manual_seed(0))
    again = cond.example_batch(4, latent_size=(8, 8), generator=torch.Generator().manual_seed(0))
    for key in cond.input_keys:
        assert key in batch
    out, null = cond(batch), cond.null(batch)
    assert out.spec == cond.output_spec, (out.spec, cond.output_spec)
    assert null.spec == cond.output_spec
    assert shapes(out) == shapes(null)
    assert out.batch_size == 4
    for k, v in cond(again).items():
        torch.testing.assert_close(v, getattr(out, k))
    # batch independence: the first two items alone give the same result
    sub = {k: v[:2] for k, v in batch.items()}
    for k, v in cond(sub).items():
        torch.testing.assert_close(v, getattr(out, k)[:2], atol=1e-5, rtol=1e-5)
    drop = cond.forward_with_dropout(batch, generator=torch.Generator().manual_seed(1))
    assert shapes(drop) == shapes(out)
    # state_dict round trip into a fresh instance
    fresh = latentkit.create("conditioner", name, **info.tiny_config)
    fresh.load_state_dict(cond.state_dict())
    fresh.eval()
    for k, v in fresh(batch).items():
        torch.testing.assert_close(v, getattr(out, k))


@pytest.mark.parametrize("name", BUILTINS)
def test_missing_key_is_a_clear_error(name: str) -> None:
    info = next(i for i in latentkit.list_components("conditioner") if i.name == name)
    cond = latentkit.create("conditioner", name, **info.tiny_config)
    batch = cond.example_batch(2, latent_size=(8, 8))
    missing = cond.input_keys[-1]
    del batch[missing]
    with pytest.raises(KeyError, match=missing):
        cond(batch)
    with pytest.raises(KeyError, match=missing):
        cond.null(batch)


# --------------------------------------------------------------------------- class_label


def test_class_label_embeds_rows_and_null_class() -> None:
    cond = ClassLabelConditioner(5, 8, outputs=["vector", "crossattn"])
    labels = torch.tensor([0, 3, 3, 4])
    out = cond({"label": labels})
    table = cond.embedding.weight
    torch.testing.assert_close(out.vector, table[labels])
    torch.testing.assert_close(out.crossattn, table[labels][:, None])  # one token
    assert not torch.equal(out.vector[0], out.vector[1])  # the label changes the output
    null = cond.null({"label": labels})
    torch.testing.assert_close(null.vector, table[5].expand(4, 8))
    assert cond.null_label == 5
    assert cond.output_spec.crossattn_dim == 8 and cond.output_spec.vector_dim == 8
    only_vec = ClassLabelConditioner(5, 8)
    assert only_vec.output_spec.crossattn_dim is None and only_vec({"label": labels}).crossattn is None


@pytest.mark.parametrize(
    "labels", [torch.tensor([0.0, 1.0]), torch.tensor([[0, 1]]), torch.tensor([0, 6]), torch.tensor([-1])]
)
def test_class_label_rejects_bad_labels(labels: torch.Tensor) -> None:
    with pytest.raises(ShapeError, match="label"):
        ClassLabelConditioner(5, 8)({"label": labels})


def test_class_label_dropout_rate_within_binomial_bounds() -> None:
    n, p = 20000, 0.2
    cond = ClassLabelConditioner(10, 4, dropout=p)
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = cond.forward_with_dropout({"label": labels}, generator=torch.Generator().manual_seed(1))
        null_row = cond.embedding.weight[10]
    dropped = (out.vector == null_row).all(dim=1)
    lo, hi = binomial_bounds(n, p)
    assert lo < int(dropped.sum()) < hi
    # kept items carry their own label's embedding
    torch.testing.assert_close(out.vector[~dropped], cond.embedding.weight[labels[~dropped]].detach())
    # rate 0 never drops, rate 1 always does
    cond.dropout = 0.0
    assert not (cond.forward_with_dropout({"label": labels[:500]}).vector == null_row).all(1).any()
    cond.dropout = 1.0
    assert (cond.forward_with_dropout({"label": labels[:500]}).vector == null_row).all()


def test_class_label_frozen_vs_trainable() -> None:
    frozen = ClassLabelConditioner(4, 8, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert frozen({"label": torch.tensor([1])}).vector.grad_fn is None
    trainable = ClassLabelConditioner(4, 8)
    trainable({"label": torch.tensor([1, 2])}).vector.square().sum().backward()
    grad = trainable.embedding.weight.grad
    assert grad is not None and grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0


# --------------------------------------------------------------------------- size


def test_size_embedding_matches_sdxl_formula_at_known_values() -> None:
    cond = SizeConditioner()  # SDXL: 256 per number, 6 numbers
    assert cond.output_spec.vector_dim == 1536
    batch = {
        "original_size": torch.tensor([[1024, 768]]),
        "crop_coords": torch.tensor([[0, 64]]),
        "target_size": torch.tensor([[1024, 1024]]),
    }
    vec = cond(batch).vector
    assert vec.shape == (1, 1536) and vec.dtype == torch.float32
    values = [1024, 768, 0, 64, 1024, 1024]
    half = 128
    for j, v in enumerate(values):
        emb = vec[0, 256 * j : 256 * (j + 1)]
        for k in (0, 1, 17, 127):
            f = math.exp(-math.log(10000.0) * k / half)
            assert emb[k].item() == pytest.approx(math.cos(v * f), abs=1e-6)
            assert emb[half + k].item() == pytest.approx(math.sin(v * f), abs=1e-6)
    # crop (0, .): cos half all ones, sin half all zeros
    torch.testing.assert_close(vec[0, 512:640], torch.ones(128))
    torch.testing.assert_close(vec[0, 640:768], torch.zeros(128))


def test_size_embedding_matches_diffusers_sdxl_time_ids() -> None:
    diffusers = pytest.importorskip("diffusers.models.embeddings")
    # diffusers' SDXL UNet: add_time_proj = Timesteps(256, flip_sin_to_cos=True, shift=0) on
    # the flattened (original_size + crops_coords_top_left + target_size) time ids
    proj = diffusers.Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    ids = torch.tensor([[512.0, 640.0, 16.0, 32.0, 1024.0, 896.0], [256.0, 256.0, 0.0, 0.0, 256.0, 256.0]])
    ref = proj(ids.flatten()).reshape(2, -1)
    vec = SizeConditioner()(
        {"original_size": ids[:, :2], "crop_coords": ids[:, 2:4], "target_size": ids[:, 4:]}
    ).vector
    torch.testing.assert_close(vec, ref, atol=2e-4, rtol=0)


def test_size_each_input_changes_its_own_slice() -> None:
    cond = SizeConditioner(16)
    base = cond.example_batch(3, generator=torch.Generator().manual_seed(0))
    out = cond(base).vector
    for j, key in enumerate(cond.keys):
        changed = dict(base)
        changed[key] = base[key] + 1
        diff = (cond(changed).vector - out).abs().sum(0)
        block = slice(32 * j, 32 * (j + 1))
        assert diff[block].sum() > 0
        assert diff.sum() == diff[block].sum()  # nothing else moves


def test_size_null_and_errors() -> None:
    batch = SizeConditioner(8).example_batch(2)
    torch.testing.assert_close(SizeConditioner(8).null(batch).vector, SizeConditioner(8)(batch).vector)
    assert SizeConditioner(8, null="zeros").null(batch).vector.abs().sum() == 0
    with pytest.raises(ShapeError, match=r"\(B, 2\)"):
        SizeConditioner(8)({**batch, "crop_coords": torch.zeros(2, 3)})
    with pytest.raises(ShapeError, match="items"):
        SizeConditioner(8)({**batch, "target_size": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="even"):
        SizeConditioner(7)
    e = fourier_embedding(torch.tensor([0.0]), 4)
    torch.testing.assert_close(e, torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64))


# --------------------------------------------------------------------------- combined


def _two_label_combined(p_a: float, p_b: float) -> CombinedConditioner:
    return CombinedConditioner(
        [
            {"name": "class_label", "config": {"num_classes": 10, "embed_dim": 4}, "dropout": p_a},
            {"name": "class_label", "config": {"num_classes": 7, "embed_dim": 6, "key": "label2"},
             "dropout": p_b, "trainable": False},
        ]
    )


def test_combined_per_child_dropout_is_independent() -> None:
    n, p_a, p_b = 20000, 0.5, 0.3
    cond = _two_label_combined(p_a, p_b)
    a, b = cond.conditioners
    g = torch.Generator().manual_seed(0)
    batch = {"label": torch.randint(0, 10, (n,), generator=g), "label2": torch.randint(0, 7, (n,), generator=g)}
    with torch.no_grad():
        vec = cond.forward_with_dropout(batch, generator=torch.Generator().manual_seed(3)).vector
    assert vec.shape == (n, 10)
    drop_a = (vec[:, :4] == a.embedding.weight[10]).all(1)
    drop_b = (vec[:, 4:] == b.embedding.weight[7]).all(1)
    for dropped, p in ((drop_a, p_a), (drop_b, p_b), (drop_a & drop_b, p_a * p_b)):
        lo, hi = binomial_bounds(n, p)
        assert lo < int(dropped.sum()) < hi, (int(dropped.sum()), p)


def test_combined_joint_dropout_drops_everything_together() -> None:
    n = 4000
    cond = CombinedConditioner(
        [{"name": "class_label", "config": {"num_classes": 3, "embed_dim": 2}},
         {"name": "size", "config": {"embed_dim": 2}}],
        dropout=0.25,
    )
    batch = cond.example_batch(n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vec = cond.forward_with_dropout(batch, generator=torch.Generator().manual_seed(1)).vector
        null = cond.null(batch).vector
    dropped = (vec[:, :2] == null[:, :2]).all(1)
    lo, hi = binomial_bounds(n, 0.25)
    assert lo < int(dropped.sum()) < hi
    torch.testing.assert_close(vec[:, 2:], null[:, 2:])  # size's null is the same embedding


def test_combined_trainable_flags_per_child() -> None:
    cond = _two_label_combined(0.0, 0.0)
    a, b = cond.conditioners
    assert cond.trainable and a.trainable and not b.trainable
    assert not any(p.requires_grad for p in b.parameters())
    cond({"label": torch.tensor([1]), "label2": torch.tensor([2])}).vector.sum().backward()
    assert a.embedding.weight.grad is not None and b.embedding.weight.grad is None
    cond.train()
    assert a.embedding.training and not b.embedding.training  # a frozen encoder stays in eval
    assert set(cond.input_keys) == {"label", "label2"}
    assert any(k.startswith("conditioners.1.") for k in cond.state_dict())


def test_combined_sdxl_style_feature_join_of_two_text_towers() -> None:
    cond = CombinedConditioner(
        [
            {"name": "openclip_text", "config": {"model_name": "tiny", "layer": "penultimate"}},
            {"name": "openclip_text", "config": {"model_name": "tiny", "text_cfg": {"width": 48, "heads": 2},
                                                 "outputs": ["crossattn", "vector"], "final_norm": False}},
            {"name": "size", "config": {"embed_dim": 4}},
        ]
    )
    assert cond.output_spec.crossattn_dim == 32 + 48
    assert cond.output_spec.vector_dim == 32 + 24
    batch = {**cond.conditioners[2].example_batch(2), "caption": ["a cat", "a dog"]}
    out = cond(batch)
    assert shapes(out) == {"crossattn": (2, 77, 80), "vector": (2, 56)}
    torch.testing.assert_close(out.crossattn[..., :32], cond.conditioners[0](batch).crossattn)
    torch.testing.assert_close(out.vector[:, 32:], cond.conditioners[2](batch).vector)
    assert shapes(cond.null(batch)) == shapes(out)


def test_combined_token_join_and_errors() -> None:
    text = latentkit.create("conditioner", "openclip_text", model_name="tiny")
    label = ClassLabelConditioner(3, 32, outputs="crossattn")
    cond = CombinedConditioner([text, label], crossattn_join="tokens")
    out = cond({"caption": ["x", "y"], "label": torch.tensor([0, 2])})
    assert out.crossattn.shape == (2, 78, 32)  # 77 text tokens, then the class token
    torch.testing.assert_close(out.crossattn[:, 77], label.embedding.weight[[0, 2]])
    with pytest.raises(ShapeError, match="crossattn_join='tokens'"):
        CombinedConditioner([text, label])({"caption": ["x"], "label": torch.tensor([0])})
    with pytest.raises(ValueError, match="one width"):
        CombinedConditioner([text, ClassLabelConditioner(3, 8, outputs="crossattn")], crossattn_join="tokens")
    with pytest.raises(ValueError, match="'name'"):
        CombinedConditioner([{"config": {}}])
    with pytest.raises(latentkit.UnknownComponentError):
        CombinedConditioner([{"name": "no_such_conditioner"}])


# --------------------------------------------------------------------------- conformance kit

KIT_TARGETS = [
    *(("conditioner", name) for name in BUILTINS),
    *(ConcatConditioner("super_resolution", layout=layout) for layout in ("CL", "CHW", "CTHW", "CDHW")),
    latentkit.create("conditioner", "openclip_text", model_name="tiny", layer="penultimate",
                     outputs="both", dropout=0.1),
]


@parametrize_with_checks(KIT_TARGETS)
def test_conformance_kit(component: Conditioner, check) -> None:  # type: ignore[no-untyped-def]
    check(component)
