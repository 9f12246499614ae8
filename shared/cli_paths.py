"""Path arguments checked when the command line is parsed, before any work starts.

Use them as argparse ``type=``: a wrong path is then a one-line error naming the argument
and the path (exit 2), never a traceback half-way through a long command. Only
:func:`out_folder` and :func:`out_file` are for paths a command may create; a command that
only reads takes :func:`folder`, so it never creates anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _creatable(path: Path) -> Path:
    """``path``, unless an existing file among its parents makes it impossible to create."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{path}: cannot be created, {parent} is a file")
            break
    return path


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
    return _creatable(path)


def out_file(value: str) -> Path:
    """A file the command writes (its folder is created when missing)."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a folder, not a file")
    return _creatable(path)
