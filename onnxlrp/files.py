"""Writing outputs so that no reader ever sees half of one and no earlier output is lost."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import OnnxLrpError


def save_atomic(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) then rename onto `path`, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
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
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path
