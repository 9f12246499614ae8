"""Shared helpers for the extraction tests: run ``site extract`` through its real parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from semiofed.client import extract_cli


def run_extract(*argv: str) -> int:
    """Parse ``argv`` with the real ``site extract`` parser and run the handler."""
    parser = argparse.ArgumentParser()
    extract_cli.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["extract", *argv])
    return args.func(args)


def manifest(out: Path) -> dict[str, dict[str, Any]]:
    """The run manifest's entries keyed by input file name."""
    data = json.loads((out / "manifest.json").read_text())
    return {Path(e["input"]).name: e for e in data["inputs"]}
