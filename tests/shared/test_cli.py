"""`semiofed --help` and every subcommand's --help are useful to a first-time user."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from semiofed.shared.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*prefix, name))
    return out


COMMANDS = _commands(build_parser())


def test_roles_present() -> None:
    top = {c[0] for c in COMMANDS if c}
    assert {"site", "server", "registry", "audit", "synth", "demo"} <= top


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "semiofed")
def test_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: semiofed")
    described = [
        line for line in text.splitlines()[1:] if line.strip() and not line.startswith("usage")
    ]
    assert len(described) >= 3, f"help for {' '.join(command)} says too little"


def test_console_script_installed() -> None:
    exe = Path(sys.executable).parent / "semiofed"
    assert exe.exists(), "the `semiofed` console command is not installed in the test venv"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "Roles:" in result.stdout


def test_library_debug_records_stay_quiet_without_verbose(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """flwr and alembic set their loggers to DEBUG; without -v none of it reaches the console."""
    import logging

    from semiofed.shared.cli import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers = []
    chatty = logging.getLogger("a-library")
    chatty.setLevel(logging.DEBUG)
    try:
        configure_logging(verbose=False)
        chatty.debug("debug page")
        chatty.info("useful line")
        configure_logging(verbose=True)  # already configured: -v still shows DEBUG
        chatty.debug("asked for")
    finally:
        root.handlers, root.level = saved
        chatty.setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "useful line" in err and "debug page" not in err and "asked for" in err
