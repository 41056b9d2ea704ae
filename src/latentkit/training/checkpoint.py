"""Atomic checkpoints: weights in safetensors, training state in JSON + safetensors.

A checkpoint is a directory ``<run>/checkpoints/step_<N>/`` holding

* ``model.safetensors`` — the model's ``state_dict``;
* ``ema.safetensors`` — the EMA weights (when EMA is on);
* ``state.safetensors`` — every tensor of the training state (optimizer moments, RNG states);
* ``state.json`` — the rest of the training state (step, data position, scheduler, ...), with
  tensors replaced by references into ``state.safetensors``, and a manifest of the other files
  (size and SHA-256 of each), written last.

Nothing is ever unpickled: the state is plain JSON plus safetensors, and :func:`to_json_state`
/ :func:`from_json_state` round-trip the nested dicts, lists, tuples, int-keyed dicts and
tensors that ``state_dict()`` methods of optimizers, schedulers and grad scalers return.

Writing is atomic (all files go to a temporary sibling directory, each file is fsync'ed, the
directory is fsync'ed, renamed into place, and the parent fsync'ed), so a crash at any moment
leaves every earlier checkpoint whole. Loading verifies the manifest; a truncated or corrupt
checkpoint raises :class:`CheckpointError`, and :func:`latest_checkpoint` falls back to the
newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import safetensors.torch
import torch

from latentkit.errors import CheckpointError
from latentkit.fileio import atomic_directory, move_aside_and_delete, remove_stale, write_synced

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "checkpoint_dirs",
    "from_json_state",
    "is_intact",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "prune_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "to_json_state",
]

FORMAT_VERSION = 2  # 2: the manifest carries a digest of itself (version 1 is still read)
READABLE_VERSIONS = (1, 2)
#: The manifest's own integrity: SHA-256 of its canonical JSON without this entry.
MANIFEST_HASH = "manifest_sha256"
MANIFEST = "state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_TENSORS_FILE = "state.safetensors"
#: The folder of a run directory that holds its checkpoints.
RUN_CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# ----------------------------------------------------------------------- serialisation


def to_json_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Turn a nested ``state_dict``-like object into JSON, moving tensors into ``tensors``.

    Tensors become ``{"__tensor__": key}`` (stored on CPU, contiguous), tuples
    ``{"__tuple__": [...]}`` and dicts with non-string keys ``{"__items__": [[k, v], ...]}``.
    Raises ``TypeError`` for anything else that JSON cannot hold (no silent pickling).
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        if key in tensors:
            raise ValueError(f"duplicate tensor key {key!r} while serialising state")
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return {"__float__": repr(obj)}
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_json_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: to_json_state(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, bool)) and k is not None:
                raise TypeError(f"cannot serialise dict key {k!r} of type {type(k).__name__} at {prefix}")
            items.append([k, to_json_state(v, tensors, f"{prefix}.{k}")])
        return {"__items__": items}
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray":
        return {"__ndarray__": to_json_state(torch.from_numpy(obj.copy()), tensors, prefix)}
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalar
        return to_json_state(obj.item(), tensors, prefix)
    raise TypeError(
        f"cannot serialise {type(obj).__name__} at {prefix!r} into a checkpoint: only tensors, "
        "numbers, strings, None, lists, tuples and dicts are stored (no pickle)"
    )


def from_json_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`to_json_state`."""
    if isinstance(obj, list):
        return [from_json_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"state refers to tensor {key!r}, missing from {STATE_TENSORS_FILE}")
            return tensors[key]
        if "__tuple__" in obj:
            return tuple(from_json_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: from_json_state(v, tensors) for k, v in obj["__items__"]}
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__ndarray__" in obj:
            return from_json_state(obj["__ndarray__"], tensors).numpy()
        return {k: from_json_state(v, tensors) for k, v in obj.items()}
    return obj


def _weights_for_safetensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------- save / list / prune


def checkpoint_dirs(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_<N>`` directory under ``directory``, oldest first
    (intact or not; temporary directories of interrupted writes are not listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    ema_state: Mapping[str, torch.Tensor] | None = None,
    state: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically under ``directory`` and return its path.

    ``state`` is any nested structure :func:`to_json_state` accepts (tensors go to
    ``state.safetensors``). With ``keep_last=K`` only the newest K intact checkpoints are
    kept afterwards. A checkpoint of the same step is replaced atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale(directory)  # left by a crash during an earlier write
    final = directory / f"step_{int(step):08d}"
    with atomic_directory(final) as tmp:
        files: dict[str, dict[str, Any]] = {}

        def put(filename: str, data: bytes) -> None:
            write_synced(tmp / filename, data)
            files[filename] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        put(MODEL_FILE, safetensors.torch.save(_weights_for_safetensors(model_state)))
        if ema_state is not None:
            put(EMA_FILE, safetensors.torch.save(_weights_for_safetensors(ema_state)))
        tensors: dict[str, torch.Tensor] = {}
        json_state = to_json_state(dict(state or {}), tensors, "state")
        put(STATE_TENSORS_FILE, safetensors.torch.save(tensors))
        manifest: dict[str, Any] = {
            "format": "latentkit-checkpoint",
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "files": files,
            "state": json_state,
        }
        manifest[MANIFEST_HASH] = _manifest_digest(manifest)
        # The manifest is written last: a directory without it is never a valid checkpoint.
        write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False).encode())
    if keep_last is not None:
        prune_checkpoints(directory, keep_last)
    return final


def prune_checkpoints(directory: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` intact checkpoints (corrupt ones older than the
    oldest kept one go too). Returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    dirs = checkpoint_dirs(directory)
    intact = [(s, p) for s, p in dirs if is_intact(p)]
    kept = {p for _, p in intact[-keep_last:]}
    oldest_kept = min((s for s, p in intact if p in kept), default=None)
    removed = []
    for s, p in dirs:
        if p in kept or (oldest_kept is not None and s > oldest_kept):
            continue
        # Renamed first (atomic), so a crash mid-delete never leaves a half-deleted step_<N>
        # that looks like a checkpoint; the next save sweeps up the renamed remains.
        if move_aside_and_delete(p):
            removed.append(p)
    return removed


#: Verified checkpoints of this process: path -> (size, mtime_ns) of each file when verified.
_VERIFIED: dict[Path, tuple[tuple[str, int, int], ...]] = {}


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    return tuple(stats)


def is_intact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a checkpoint that loads: the same test as :func:`load_checkpoint`
    (manifest digest, every file's size and SHA-256). A result is remembered in this process
    until a file of the checkpoint changes, so pruning after each save does not hash old
    checkpoints again."""
    path = Path(path)
    try:
        fingerprint = _fingerprint(path)
        if _VERIFIED.get(path) == fingerprint:
            return True
        _verify(path, _read_manifest(path), verify_hash=True)
    except (OSError, CheckpointError):
        return False
    _VERIFIED[path] = fingerprint
    return True


# ----------------------------------------------------------------------- load


@attrs.frozen
class LoadedCheckpoint:
    """A verified checkpoint: ``step``, ``model`` weights, ``ema`` weights (or ``None``) and
    the training ``state`` (nested dicts with tensors restored)."""

    path: Path
    step: int
    model: dict[str, torch.Tensor] = attrs.field(repr=False)
    ema: dict[str, torch.Tensor] | None = attrs.field(repr=False)
    state: dict[str, Any] = attrs.field(repr=False)


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a directory)")
    if not manifest_path.exists():
        raise CheckpointError(
            f"checkpoint {path} is incomplete: {MANIFEST} is missing (the write was interrupted)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable or truncated: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "latentkit-checkpoint":
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not a latentkit checkpoint manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path}: format version {version!r} is not supported (this latentkit reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    if version >= 2 and manifest.get(MANIFEST_HASH) != _manifest_digest(manifest):
        raise CheckpointError(f"checkpoint {path} is corrupt: {MANIFEST} does not match its own digest "
                              "(the file was edited or damaged)")
    files = manifest.get("files")
    if not (isinstance(files, dict) and MODEL_FILE in files and STATE_TENSORS_FILE in files
            and all(isinstance(f, str) and "/" not in f and isinstance(i, dict) and isinstance(i.get("bytes"), int)
                    and isinstance(i.get("sha256"), str) for f, i in files.items())
            and isinstance(manifest.get("step"), int) and isinstance(manifest.get("state"), dict)):
        raise CheckpointError(f"checkpoint {path} is corrupt: {MANIFEST} lacks the files, step or state of a "
                              "checkpoint")
    return manifest


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != MANIFEST_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _verify(path: Path, manifest: Mapping[str, Any], verify_hash: bool) -> None:
    for filename, info in manifest["files"].items():
        fp = path / filename
        if not fp.exists():
            raise CheckpointError(f"checkpoint {path} is corrupt: {filename} is missing")
        size = fp.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {filename} has {size} bytes, expected "
                f"{info['bytes']} (truncated or overwritten)"
            )
        if verify_hash and _sha256(fp) != info["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {filename} does not match its SHA-256 in {MANIFEST}"
            )


def _load_tensors(path: Path, filename: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path / filename)
    except Exception as exc:  # safetensors raises its own error type for bad headers
        raise CheckpointError(f"checkpoint {path}: cannot read {filename}: {exc}") from exc


def load_checkpoint(path: str | os.PathLike[str], *, verify_hash: bool = True) -> LoadedCheckpoint:
    """Load and verify a checkpoint directory (sizes always, SHA-256 unless told not to).

    Raises :class:`CheckpointError` naming the file and the problem when the checkpoint is
    incomplete, truncated or corrupt.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    _verify(path, manifest, verify_hash)
    files = manifest["files"]
    model = _load_tensors(path, MODEL_FILE)
    ema = _load_tensors(path, EMA_FILE) if EMA_FILE in files else None
    tensors = _load_tensors(path, STATE_TENSORS_FILE)
    try:
        state = from_json_state(manifest["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: its training state does not decode ({exc})") from exc
    if state.get("step", manifest["step"]) != manifest["step"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its state is of step {state.get('step')}, the manifest "
                              f"says step {manifest['step']}")
    return LoadedCheckpoint(path=path, step=int(manifest["step"]), model=model, ema=ema, state=state)


def latest_checkpoint(
    directory: str | os.PathLike[str], *, verify_hash: bool = True
) -> LoadedCheckpoint | None:
    """The newest intact checkpoint under ``directory`` (``None`` when there is none).

    A corrupt or truncated newer checkpoint is reported with a warning that names it and the
    problem, and the previous one is used.
    """
    for _step, path in reversed(checkpoint_dirs(directory)):
        try:
            return load_checkpoint(path, verify_hash=verify_hash)
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint: {exc}; falling back to the previous one", stacklevel=2)
    return None


def resolve_checkpoint(
    path: str | os.PathLike[str], *, verify_hash: bool = True
) -> LoadedCheckpoint:
    """The checkpoint ``path`` names: one ``step_N`` checkpoint directory, or the newest intact
    checkpoint of a ``checkpoints/`` folder or of a run directory (which holds one).

    Raises :class:`CheckpointError` when nothing intact is there, naming what was looked at.
    """
    path = Path(path)
    if (path / MANIFEST).exists():
        return load_checkpoint(path, verify_hash=verify_hash)
    folder = path / RUN_CHECKPOINTS if (path / RUN_CHECKPOINTS).is_dir() else path
    ckpt = latest_checkpoint(folder, verify_hash=verify_hash)
    if ckpt is None:
        where = f"{path} (nor under {folder})" if folder != path else str(path)
        raise CheckpointError(f"no intact checkpoint found under {where}: expected a step_N "
                              f"checkpoint, a {RUN_CHECKPOINTS}/ folder of them or a run directory")
    return ckpt


def load_weights(
    path: str | os.PathLike[str], *, ema: bool = True, verify_hash: bool = True
) -> dict[str, torch.Tensor]:
    """Model weights of a checkpoint (a ``step_N`` directory, a ``checkpoints/`` folder or a
    run directory: its newest intact checkpoint, see :func:`resolve_checkpoint`); the EMA
    weights when present and ``ema`` is true."""
    ckpt = resolve_checkpoint(path, verify_hash=verify_hash)
    return ckpt.ema if (ema and ckpt.ema is not None) else ckpt.model
