"""The layering rule: shared imports none of the others; privacy imports only shared;
client and server import shared and privacy, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "privacy", "client", "server")
FORBIDDEN = {
    "shared": {"privacy", "client", "server"},
    "privacy": {"client", "server"},
    "client": {"server"},
    "server": {"client"},
}


def imported_packages(source: str, package: str, module_parts: tuple[str, ...]) -> set[str]:
    """Top-level SemioFed packages a module imports (absolute ``semiofed.x`` or relative)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Resolve a relative import against semiofed.<package>.<module_parts...>
                base = ["semiofed", package, *module_parts[:-1]]
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "semiofed" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] in PACKAGES:  # a bare `import server` would also be a violation
                found.add(parts[0])
    return found


def violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT / package).with_suffix("").parts
            used = imported_packages(path.read_text(encoding="utf-8"), package, parts)
            for other in sorted(used & FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)} imports semiofed.{other}")
    return bad


def test_layering_rule_holds() -> None:
    assert violations() == []


def test_checker_catches_violations() -> None:
    assert imported_packages("from semiofed.client import app", "shared", ("x",)) == {"client"}
    assert imported_packages("import semiofed.server.cli", "client", ("x",)) == {"server"}
    assert imported_packages("from ..privacy import keys", "shared", ("x",)) == {"privacy"}
    assert imported_packages("from ... import client", "shared", ("a", "b")) == {"client"}
    assert imported_packages("from .recording import load", "shared", ("x",)) == {"shared"}
    assert imported_packages("import server", "client", ("x",)) == {"server"}


def test_a_training_message_does_not_import_the_analysis_stack() -> None:
    """Flower starts a fresh ClientApp process per message, so what ``site_task`` imports is
    paid by every training round (captum and scipy.signal: ~2 s of CPU)."""
    import subprocess
    import sys

    heavy = ("captum", "scipy.signal", "matplotlib", "semiofed.client.analysis.pipeline")
    code = (
        "import sys, semiofed.client.app, semiofed.client.site_task; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout
