"""Writing outputs so that no reader ever sees half of one and no earlier output is lost."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from .errors import OnnxLrpError


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def as_if_created(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file or folder the mode open() or mkdir() would have given it under the user's umask (644 /
    755 under umask 022): the temporary files and folders that make writes atomic start private (600 /
    700), which would keep a server running as another user from reading them."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def save_atomic(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) then rename onto `path`, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        as_if_created(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_dir_atomic(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Call write(tmp_dir) on an empty folder beside `path`, then rename it to `path`.

    An existing `path` is an error unless `overwrite`; then it is swapped out only once the new
    folder is complete, so an interrupted export leaves the old one in place.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OnnxLrpError(f"'{path}' already exists; remove it, choose another --out, or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        write(tmp)
        as_if_created(tmp, directory=True)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path
