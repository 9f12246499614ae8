"""Path arguments checked when the command line is parsed, before any work starts.

Use them as argparse ``type=``: a wrong path is then a one-line error naming the argument
and the path (exit 2), never a traceback half-way through a long command. Only
:func:`out_folder` and :func:`out_file` are for paths a command may create; a command that
only reads takes :func:`folder` or :func:`existing_file`, so it never creates anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder among ``path``'s parents (what makes it uncreatable)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def folder(value: str) -> Path:
    """An existing folder the command reads (or writes into, but does not create)."""
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path}: no such folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a file, not a folder")
    return path


def out_folder(value: str) -> Path:
    """A folder the command writes, created by it when missing."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a file, not a folder")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{path}: cannot be created, {blocking} is a file")
    return path


def out_file(value: str) -> Path:
    """A file the command writes (its folder is created when missing)."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a folder, not a file")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{path}: cannot be created, {blocking} is a file")
    return path


def existing_file(value: str) -> Path:
    """An existing file the command reads."""
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a folder, not a file")
    return path
