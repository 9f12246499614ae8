"""Errors raised for bad input files: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class SemioFedError(Exception):
    """Base class for errors a user can act on (printed without a traceback by the CLI)."""


class FormatError(SemioFedError, ValueError):
    """A recording or events file is malformed."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
