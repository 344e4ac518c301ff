"""Filesystem helpers: project root, run-folder numbering, atomic writes."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

ROOT = Path(__file__).resolve().parents[1]  # the project root (holds train.py)


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """Return path, or path{sep}2, path{sep}3, ... for the first that does not exist (runs/train/exp -> exp2)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{stem}{sep}{n}{suffix}").exists():
            n += 1
        path = Path(f"{stem}{sep}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_path(path: str | Path, base: Path = ROOT) -> Path:
    """Resolve a relative path against base (the project root by default), as YOLOv5 data YAMLs do."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def project_candidates(path: str | Path, *dirs: str) -> list[Path]:
    """Where a relative path may be: as given (from the working directory), under ROOT, then ROOT/<dir>/<name>."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    return [p, ROOT / p] + [ROOT / d / p.name for d in dirs]


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file (descriptor, name) in path's folder, to be renamed over path, created with mode 0666 so
    that the kernel applies the umask as for any new file (mkstemp's own 0600 would make shared datasets and runs
    private; reading the umask in Python means setting it, which races with other threads creating files)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue
        except OSError as e:  # a read-only disk, a missing folder: name the file being written, not the temporary
            raise OSError(e.errno, e.strerror, str(path)) from e
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def write_atomic(path: str | Path, data: str | bytes | Callable[[BinaryIO], object]) -> Path:
    """Write data to a temporary file beside path, fsync it and rename it over path: a reader, or a resume after a
    kill mid-write, finds the old file or the new one, never part of one. data: text (written as UTF-8), bytes, or
    a function that writes into the open binary file (``lambda f: torch.save(obj, f)``)."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
