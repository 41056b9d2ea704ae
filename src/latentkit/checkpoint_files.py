"""Safe, copy-free reading and atomic writing of single-file checkpoints.

* ``.safetensors`` files are memory-mapped: every tensor is a view into the mapped file, so
  reading a 4 GB checkpoint allocates no 4 GB buffer; pages come in from the page cache when
  a tensor is first touched.
* Anything else (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) is read with
  ``torch.load(weights_only=True)`` (memory-mapped too where the file is in torch's zip
  format): the unpickler only rebuilds tensors and plain containers, so a pickle that names
  any other callable is refused before anything runs.
* Weights nested under ``state_dict`` (PyTorch Lightning, the original LDM training code),
  ``model`` or ``module`` are unwrapped; top-level scalars such as ``global_step`` are kept
  apart as metadata.

Every failure is a :class:`CheckpointError` that names the file and says what was wrong.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from latentkit.errors import CheckpointError
from latentkit.fileio import atomic_write

__all__ = ["CheckpointError", "RawCheckpoint", "read_checkpoint", "write_checkpoint"]

#: Suffixes read through safetensors; every other suffix goes through ``torch.load``.
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


@attrs.frozen(eq=False)
class RawCheckpoint:
    """What :func:`read_checkpoint` found in a file."""

    state: dict[str, torch.Tensor]  # flat tensor state dict (unwrapped from ``state_dict``)
    metadata: dict[str, Any]  # safetensors header metadata, or non-tensor top-level entries
    path: Path
    format: str  # "safetensors" or "torch"


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in SAFETENSORS_SUFFIXES


def _check_safetensors_header(path: Path) -> None:
    """Validate the header length and the declared data size before mapping the file, so that
    a truncated file gets a message saying so (the library's own error is terse)."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            raise CheckpointError(
                f"{path}: truncated or corrupt safetensors file: the header declares {n} bytes "
                f"but only {size - 8} follow"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise CheckpointError(f"{path}: corrupt safetensors header (a tensor entry lacks its data offsets)") from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file: tensor data needs {8 + n + end} bytes, the "
            f"file has {size}"
        )


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import SafetensorError, safe_open

    _check_safetensors_header(path)
    try:
        # safe_open maps the file; get_tensor returns views into the mapping (no copy)
        with safe_open(os.fspath(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file: {exc}") from None
    return RawCheckpoint(state=state, metadata=metadata, path=path, format="safetensors")


def _torch_load(path: Path) -> Any:
    mmap = zipfile.is_zipfile(path)  # torch can only map its zip format, not legacy pickles
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file names objects other than tensors and plain "
            f"containers, which could run code; nothing was executed. Details: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. If you trust the "
            "file, convert it to .safetensors in a sandbox first."
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: unreadable torch checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _read_torch(path: Path) -> RawCheckpoint:
    obj = _torch_load(path)
    metadata: dict[str, Any] = {}
    # Lightning / LDM nest the weights under "state_dict" (sometimes more than once), other
    # trainers under "model" or "module"
    while isinstance(obj, Mapping):
        nest = next((k for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
        if nest is None:
            break
        metadata.update({k: v for k, v in obj.items() if k != nest and not isinstance(v, Mapping)})
        obj = obj[nest]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            state[str(key)] = value
        elif not isinstance(value, Mapping):
            metadata.setdefault(str(key), value)
    return RawCheckpoint(state=state, metadata=metadata, path=path, format="torch")


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read a single-file checkpoint without copying its tensors (see the module docstring).

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or unsafe file, and
    ``FileNotFoundError`` when ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist")
    raw = _read_safetensors(path) if _is_safetensors(path) else _read_torch(path)
    if not raw.state:
        raise CheckpointError(f"{path}: holds no tensors")
    return raw


def _unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors that own their storage: a view (e.g. q, k, v split out of one fused projection)
    is cloned, since safetensors refuses shared storage and ``torch.save`` would write the
    whole underlying storage for each view."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in state.items():
        storage = t.untyped_storage()
        whole = (
            t.is_contiguous()
            and t.storage_offset() == 0
            and storage.nbytes() == t.numel() * t.element_size()
        )
        if not whole or storage.data_ptr() in seen:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def write_checkpoint(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``state`` to ``path`` atomically: to a temporary file in the same folder, then
    renamed over ``path``. The rename matters when ``path`` is the file the model was loaded
    from: its tensors are views into that file's mapping, which stays valid because the old
    file is unlinked, not overwritten.

    ``.safetensors`` gets ``metadata`` (values turned into strings) in its header; other
    suffixes get ``{"state_dict": state, **metadata}`` through ``torch.save``.
    """
    path = Path(path)
    tensors = _unshared({k: v.detach().to("cpu") for k, v in state.items()})

    def write(tmp: Path) -> None:
        if _is_safetensors(path):
            from safetensors.torch import save_file

            save_file(tensors, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        else:
            torch.save({"state_dict": tensors, **dict(metadata or {})}, tmp)

    return atomic_write(path, write)
