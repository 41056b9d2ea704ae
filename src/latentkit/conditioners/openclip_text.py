"""Text conditioning through an open_clip text tower (Radford et al. 2021; Cherti et al. 2023).

Stable Diffusion 2.x conditions on the OpenCLIP ViT-H/14 text tower's *penultimate* layer,
followed by the final layer norm (``FrozenOpenCLIPEmbedder``, ``layer="penultimate"``); SD 1.x
on the last layer of CLIP ViT-L/14; SDXL on the penultimate layer of ViT-bigG/14 without the
final norm, plus the pooled, projected text embedding as a global vector (Podell et al. 2023,
Sec. 2.1). All three are one configuration of :class:`OpenCLIPTextConditioner`.

Only the text tower is built (from open_clip's model config, never the vision tower), with
random weights or weights from a local file: a full open_clip checkpoint (``CLIP`` or
``CustomTextCLIP`` keys), a bare text-tower state dict, or any checkpoint that embeds one under
a prefix (e.g. ``cond_stage_model.model.`` in SD 2.x files); the prefix is found automatically.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from latentkit.conditioners.base import (
    BaseConditioner,
    as_string_list,
    load_weights_file,
    parse_outputs,
)
from latentkit.specs import Conditioning, ConditioningSpec

__all__ = ["OPENCLIP_TEXT_PRESETS", "OpenCLIPTextConditioner", "build_openclip_text_tower"]

#: Small text towers that are not open_clip model names, for tests and the quickstart. They
#: use the real CLIP BPE tokenizer (vocabulary 49408, context 77).
OPENCLIP_TEXT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 32,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "small": {
        "embed_dim": 256,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
    },
}

_WORDS = (
    "a photo of a cat dog red blue small large house tree river painting of the sky at night "
    "with an astronaut riding horse in style sketch"
).split()


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int) -> Any:
    # reading the BPE merges takes ~0.1 s; the tokenizer is stateless, so share it
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


def _model_config(model_name: str) -> dict[str, Any]:
    import open_clip

    if model_name in OPENCLIP_TEXT_PRESETS:
        cfg = OPENCLIP_TEXT_PRESETS[model_name]
        return {"embed_dim": cfg["embed_dim"], "text_cfg": dict(cfg["text_cfg"])}
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        names = [*OPENCLIP_TEXT_PRESETS, *open_clip.list_models()]
        close = difflib.get_close_matches(model_name, names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"OpenCLIPTextConditioner: unknown model_name {model_name!r}; expected one of "
            f"open_clip.list_models() or the presets {sorted(OPENCLIP_TEXT_PRESETS)}.{hint}"
        )
    return cfg  # type: ignore[no-any-return]


def build_openclip_text_tower(
    model_name: str,
    *,
    text_cfg: Mapping[str, Any] | None = None,
    embed_dim: int | None = None,
    quick_gelu: bool | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build the randomly initialised text tower (``open_clip.transformer.TextTransformer``) of
    open_clip model ``model_name`` (or a preset of :data:`OPENCLIP_TEXT_PRESETS`), with
    ``text_cfg`` entries overriding the model's, without building its vision tower.

    Returns the tower and the resolved config (``embed_dim``, ``quick_gelu``, ``text_cfg``).
    """
    from open_clip.model import CLIPTextCfg, _build_text_tower

    cfg = _model_config(model_name)
    merged = {**cfg.get("text_cfg", {}), **dict(text_cfg or {})}
    if merged.get("hf_model_name"):
        raise ValueError(
            f"OpenCLIPTextConditioner: {model_name!r} uses a Hugging Face text tower "
            f"(hf_model_name={merged['hf_model_name']!r}), which needs the transformers package "
            "and a download; only open_clip's own TextTransformer towers are supported"
        )
    fields = set(CLIPTextCfg.__dataclass_fields__)
    unknown = sorted(set(merged) - fields)
    if unknown:
        raise ValueError(
            f"OpenCLIPTextConditioner: unknown text_cfg key(s) {unknown}; accepted: {sorted(fields)}"
        )
    resolved = {
        "embed_dim": int(embed_dim if embed_dim is not None else cfg["embed_dim"]),
        "quick_gelu": bool(cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu),
        "text_cfg": merged,
    }
    # open_clip's own builder keeps the activation / norm / pooling choices exactly as
    # create_model makes them; it constructs the text tower alone.
    tower: nn.Module = _build_text_tower(resolved["embed_dim"], CLIPTextCfg(**merged), resolved["quick_gelu"])
    return tower, resolved


def _find_prefix(state: Mapping[str, torch.Tensor], required: Sequence[str], prefix: str | None) -> str:
    if prefix is not None:
        return prefix
    anchor = "token_embedding.weight"
    candidates = [k[: -len(anchor)] for k in state if k.endswith(anchor)]
    complete = [p for p in candidates if all(p + k in state for k in required)]
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        raise ValueError(
            f"OpenCLIPTextConditioner: the weights hold several open_clip text towers (key prefixes "
            f"{complete}); pass weights_prefix= to pick one"
        )
    if not candidates:
        raise ValueError(
            "OpenCLIPTextConditioner: no open_clip text tower in the weights (no key ends in "
            f"{anchor!r}); found keys like {sorted(state)[:5]}"
        )
    best = max(candidates, key=lambda p: sum(p + k in state for k in required))
    missing = [best + k for k in required if best + k not in state]
    raise ValueError(
        f"OpenCLIPTextConditioner: the text tower under prefix {best!r} is incomplete; missing "
        f"{len(missing)} key(s), e.g. {missing[:5]} (is the model_name / text_cfg right?)"
    )


class OpenCLIPTextConditioner(BaseConditioner):
    """``caption`` (list of B strings) -> open_clip text features.

    ``crossattn`` is (B, context_length, width): the token features after block ``layer``
    (``"last"``, ``"penultimate"`` or a block index), passed through the final layer norm when
    ``final_norm``. ``vector`` is (B, embed_dim): open_clip's pooled, projected text embedding
    (``encode_text`` without normalisation). The null input is the empty prompt ``""``.
    """

    text: Any  # open_clip.transformer.TextTransformer

    def __init__(
        self,
        model_name: str,  # open_clip model name ("ViT-H-14", ...) or preset ("tiny", "small")
        *,
        weights: str | os.PathLike[str] | None = None,  # local open_clip checkpoint / state dict
        weights_prefix: str | None = None,  # key prefix of the tower in `weights` (None: find it)
        text_cfg: Mapping[str, Any] | None = None,  # overrides of the model's text_cfg
        embed_dim: int | None = None,  # override of the pooled projection width
        quick_gelu: bool | None = None,  # override of the model's activation (OpenAI weights)
        layer: str | int = "last",  # "last", "penultimate" or a block index
        final_norm: bool = True,  # apply ln_final to the chosen layer (SD 2.x: yes, SDXL: no)
        outputs: str | Iterable[str] = "crossattn",  # "crossattn", "vector" or both
        key: str = "caption",  # batch key of the prompts
        null_prompt: str = "",  # the unconditional prompt
        dropout: float = 0.0,  # probability of the null prompt in training (CFG)
        trainable: bool = False,  # fine-tune the text tower with the denoiser
        grad_checkpointing: bool = False,  # recompute blocks in backward (trainable towers)
    ) -> None:
        tower, resolved = build_openclip_text_tower(
            model_name, text_cfg=text_cfg, embed_dim=embed_dim, quick_gelu=quick_gelu
        )
        outs = parse_outputs(outputs, ("crossattn", "vector"), "OpenCLIPTextConditioner")
        width = int(tower.width)
        pooled_dim = int(tower.output_dim) if tower.text_projection is not None else width
        super().__init__(
            output_spec=ConditioningSpec(
                crossattn_dim=width if "crossattn" in outs else None,
                vector_dim=pooled_dim if "vector" in outs else None,
            ),
            input_keys=(key,),
            dropout=dropout,
            trainable=trainable,
        )
        self.outputs = outs
        self.model_name = model_name
        self.config = resolved
        self.key = key
        self.null_prompt = str(null_prompt)
        self.final_norm = bool(final_norm)
        self.text = tower
        n_layers = len(tower.transformer.resblocks)
        index = {"last": -1, "penultimate": -2}.get(layer, layer) if isinstance(layer, str) else layer
        if isinstance(index, str) or isinstance(index, bool) or not isinstance(index, int) or not (
            -n_layers <= index < n_layers
        ):
            raise ValueError(
                f"OpenCLIPTextConditioner: layer must be 'last', 'penultimate' or a block index in "
                f"[{-n_layers}, {n_layers - 1}] ({n_layers} blocks), got {layer!r}"
            )
        self.layer = layer
        self.layer_index = index % n_layers  # absolute block index
        self.context_length = int(tower.context_length)
        self.tokenizer = self._make_tokenizer(model_name, resolved["text_cfg"])
        if weights is not None:
            self.load_weights(weights, prefix=weights_prefix)
        self.text.set_grad_checkpointing(bool(grad_checkpointing))
        self.set_trainable(trainable)

    def _make_tokenizer(self, model_name: str, text_cfg: Mapping[str, Any]) -> Any:
        import open_clip

        if model_name in OPENCLIP_TEXT_PRESETS:
            return _simple_tokenizer(self.context_length)
        try:
            return open_clip.get_tokenizer(model_name, context_length=self.context_length)
        except Exception as exc:  # a Hugging Face tokenizer that is not cached locally
            raise RuntimeError(
                f"OpenCLIPTextConditioner: cannot create the tokenizer of {model_name!r} "
                f"({text_cfg.get('hf_tokenizer_name')!r}) offline: {type(exc).__name__}: {exc}"
            ) from exc

    # ------------------------------------------------------------------ weights

    def set_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the text tower; the parameters that ``outputs`` and ``layer``
        never use (the blocks after ``layer``, the pooled projection, ``ln_final`` without
        ``final_norm``) stay frozen, since no gradient reaches them (and DDP refuses trainable
        parameters without one)."""
        super().set_trainable(trainable)
        if trainable:
            for p in self.unused_parameters():
                p.requires_grad_(False)
            self.trainable = any(p.requires_grad for p in self.parameters())

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters of the tower that :meth:`encode` never reaches with these options."""
        if "vector" in self.outputs:
            return []  # the pooled vector runs every block, ln_final and the projection
        unused: list[nn.Parameter] = []
        projection = getattr(self.text, "text_projection", None)
        if isinstance(projection, nn.Parameter):
            unused.append(projection)
        elif isinstance(projection, nn.Module):
            unused.extend(projection.parameters())
        for block in list(self.text.transformer.resblocks)[self.layer_index + 1:]:
            unused.extend(block.parameters())
        if not self.final_norm:
            unused.extend(self.text.ln_final.parameters())
        return unused

    def load_weights(
        self,
        weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
        *,
        prefix: str | None = None,
    ) -> None:
        """Load text-tower weights from a local file (safetensors, or ``torch.load`` with
        ``weights_only=True``) or a state dict. Keys are matched under ``prefix``: found
        automatically as the one prefix under which every tower key exists (``""`` for
        ``CLIP`` checkpoints, ``"text."`` for ``CustomTextCLIP`` ones and for this
        conditioner's own ``state_dict``). Other keys (the vision tower, ...) are ignored.
        """
        state = dict(weights) if isinstance(weights, Mapping) else load_weights_file(weights)
        own = self.text.state_dict()
        # a missing text_projection is tolerated when the pooled vector is not used
        required = [k for k in own if "vector" in self.outputs or not k.startswith("text_projection")]
        p = _find_prefix(state, required, prefix)
        picked = {k: state[p + k] for k in own if p + k in state}
        missing = [k for k in required if k not in picked]
        if missing:
            raise ValueError(
                f"OpenCLIPTextConditioner: weights under prefix {p!r} lack {len(missing)} key(s), "
                f"e.g. {missing[:5]}"
            )
        bad = [
            f"{p + k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}"
            for k, v in picked.items()
            if tuple(v.shape) != tuple(own[k].shape)
        ]
        if bad:
            raise ValueError(
                f"OpenCLIPTextConditioner: weights do not fit {self.model_name!r} "
                f"(width {self.text.width}, {len(self.text.transformer.resblocks)} blocks): "
                + "; ".join(bad[:5])
            )
        self.text.load_state_dict(picked, strict=False)

    # ------------------------------------------------------------------ encoding

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> token ids (B, context_length) on the tower's device (truncated to fit)."""
        tokens = self.tokenizer(list(prompts))
        return tokens.to(self.text.token_embedding.weight.device)

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """Encode a list of prompts."""
        tokens = self.tokenize(prompts)
        want_vector = "vector" in self.outputs
        with self.encoder_grad():
            out = self.text.forward_intermediates(
                tokens,
                indices=[self.layer_index],
                stop_early=not want_vector,  # skip the blocks after `layer` when unused
                intermediates_only=not want_vector,
                output_fmt="NLC",
            )
            crossattn = None
            if "crossattn" in self.outputs:
                crossattn = out["text_intermediates"][0]  # (B, L, width)
                if self.final_norm:
                    crossattn = self.text.ln_final(crossattn)
        return Conditioning(
            crossattn=crossattn,
            vector=out["text_features"] if want_vector else None,  # (B, embed_dim)
        )

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Encode ``batch[key]``."""
        self.check_batch(batch)
        prompts = as_string_list(batch[self.key], key=self.key, owner=self._owner())
        return self.encode(prompts)

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """The null prompt's encoding, repeated for every item."""
        b = self.check_batch(batch)
        return self.encode([self.null_prompt]).map(lambda t: t.repeat(b, *([1] * (t.ndim - 1))))

    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Short random prompts drawn from a fixed word list."""
        lengths = torch.randint(1, 8, (batch_size,), generator=generator)
        prompts = []
        for n in lengths.tolist():
            idx = torch.randint(0, len(_WORDS), (n,), generator=generator).tolist()
            prompts.append(" ".join(_WORDS[i] for i in idx))
        return {self.key: prompts}
