"""The one way latentkit writes files that must never be seen half-written.

:func:`atomic_write_bytes` writes to a temporary sibling, fsyncs it, renames it over the
target and fsyncs the directory, so a reader (or a run resumed after a crash or a power cut)
sees the old file or the new one, never a part. :func:`atomic_directory` does the same for a
directory of files (training checkpoints). Everything latentkit writes for a user goes through
these two: checkpoints, configs copied into runs, metrics, sample grids, latent caches,
saved autoencoders and single-file checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "atomic_directory",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "move_aside_and_delete",
    "remove_stale",
    "write_synced",
]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that a rename inside it survives a power cut (a no-op where the
    platform cannot open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (not atomic by itself: for files inside a
    temporary directory that is renamed into place afterwards)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _temporary_sibling(path: Path, what: str = "") -> Path:
    return path.with_name(f".tmp-{path.name}-{what}{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Atomically create or replace ``path`` with what ``write(tmp)`` writes to the temporary
    file ``tmp`` (for writers that want a file name, e.g. ``torch.save``): ``tmp`` is then
    fsync'ed, renamed over ``path`` and the directory fsync'ed. On any error ``tmp`` is
    removed and ``path`` is left as it was. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module doc). Returns ``path``."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see the module doc). Returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory atomically: yields a temporary sibling to fill (with
    :func:`write_synced`); on leaving the block it is fsync'ed and renamed to ``path`` (an
    existing ``path`` is moved aside first and deleted after), and the parent is fsync'ed. On
    an error the temporary directory is deleted and ``path`` is left as it was.

    Temporary names start with ``.tmp-``, so listings that look for finished entries never
    see them; :func:`remove_stale` sweeps up what a crash left."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        if final.exists():
            trash = _temporary_sibling(final, "old-")
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


def remove_stale(directory: str | os.PathLike[str]) -> None:
    """Delete the temporary files and directories that an interrupted atomic write left in
    ``directory`` (names ``.tmp-*``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for stale in directory.glob(".tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def move_aside_and_delete(path: str | os.PathLike[str]) -> bool:
    """Delete the directory ``path`` by renaming it to a temporary name first (atomic), so a
    crash mid-delete never leaves a half-deleted directory under its real name. Returns
    whether it was removed."""
    path = Path(path)
    trash = _temporary_sibling(path, "old-")
    try:
        os.rename(path, trash)
    except OSError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True
