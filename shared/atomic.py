"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace``.

A reader never sees a half-written file; a crash leaves the previous version intact, and the
next write of that file removes the temporary file a killed writer left.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Temporary files of ``path`` left by writers that died mid-write (kill -9): named
    ``.NAME.PID.*.tmp*``, removed once process PID is gone."""
    head = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(head)}*.tmp*"):
        # PID.RAND.tmpSUFFIX exactly (mkstemp's RAND has no dot), so that the temp file of a
        # sibling named NAME.<digits>... never parses as one of NAME's
        found = re.fullmatch(r"(\d+)\.[^.]+\.tmp.*", tmp.name[len(head) :])
        if found and not pid_alive(int(found.group(1))):
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.
    Temporary files of ``path`` that a killed writer left are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(
    path: str | os.PathLike[str], writer: Callable[[IO[Any]], None], binary: bool = False
) -> None:
    """Write ``path`` atomically by calling ``writer`` on an open file handle."""
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh,
    ):
        writer(fh)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data), binary=True)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def json_safe(value: Any) -> Any:
    """A copy fit for strict JSON: non-finite floats become ``None`` (JSON has no NaN or
    infinity), mapping keys become strings, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
