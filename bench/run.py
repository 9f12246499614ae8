"""``make bench``: run every ``bench/bench_*.py`` and write bench/results.md from measurements.

Each benchmark module defines ``run(ctx: BenchContext) -> str`` returning a Markdown section
built from what it measured in this run (never typed numbers). Timings are ratios measured
side by side in one run; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from semiofed.shared.atomic import atomic_write_text

BENCH_DIR = Path(__file__).resolve().parent


@dataclass
class BenchContext:
    """Shared state for benchmark modules: a scratch folder that lives for the whole run."""

    work: Path

    def path(self, name: str) -> Path:
        p = self.work / name
        p.mkdir(parents=True, exist_ok=True)
        return p


BEGIN, END = "<!-- bench:{} -->", "<!-- /bench:{} -->"


def _sections(path: Path) -> dict[str, str]:
    """The per-module sections of an existing results file, by module name."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    pattern = r"<!-- bench:(\w+) -->\n.*?<!-- /bench:\1 -->\n"
    return {m.group(1): m.group(0) for m in re.finditer(pattern, text, flags=re.S)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="module names to run (default: all)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results.md"))
    args = parser.parse_args(argv)
    modules = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    if args.only:
        modules = [m for m in modules if m in args.only or m.removeprefix("bench_") in args.only]
    sections = [
        "# SemioFed benchmark results\n",
        f"Written on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Every figure below was measured by `make bench` (each section says when; "
        "`python -m bench.run --only NAME` re-measures one section and keeps the others).\n",
    ]
    failed = 0
    kept = _sections(Path(args.out)) if args.only else {}
    measured: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="semiofed-bench-") as tmp:
        ctx = BenchContext(Path(tmp))
        for name in modules:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                section = importlib.import_module(f"bench.{name}").run(ctx)
            except Exception:  # a failing benchmark is reported, the others still run
                failed += 1
                section = f"## {name}\n\nFAILED:\n\n```\n{traceback.format_exc()}```\n"
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            measured[name] = (
                f"{BEGIN.format(name)}\n{section.rstrip()}\n\n"
                f"_{name} took {time.perf_counter() - t0:.0f} s ({when})._\n{END.format(name)}\n"
            )
            print(section, flush=True)
    # --only: the other modules' sections stay as their own earlier run measured them
    merged = {**kept, **measured}
    sections += [merged[name] for name in sorted(merged)]
    atomic_write_text(args.out, "\n".join(sections))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
