"""Every command checks its paths before it works: a file where a folder is expected, a
folder where a file is, or a missing folder a command only reads, is one line naming the
argument and the path (exit 2), and creates nothing."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from semiofed.shared.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "demo.toml")

# (argv with F = an existing file, D = an existing empty folder, M = a missing path; the
# argument the error must name)
CASES = [
    ("synth --out F", "--out"),
    ("synth --out F/below", "--out"),
    (f"audit approve {CONFIG} --state F", "--state"),
    ("audit report --state D --out D", "--out"),
    ("audit ledger --state F", "--state"),
    ("audit attack --state M", "--state"),
    ("audit attack --state F", "--state"),
    ("server init --out F", "--out"),
    (f"server run --config {CONFIG} --out F", "--out"),
    (f"server pretrain --config {CONFIG} --out F", "--out"),
    ("server simulate --out F", "--out"),
    ("demo --out F", "--out"),
    ("registry serve --data F", "--data"),
    ("registry retire v1 --data F", "--data"),
    ("registry keygen --data F", "--data"),
    ("registry token create --role site --data F", "--data"),
    ("registry token list --data F", "--data"),
    ("registry serve --data M", "--data"),
    ("registry retire v1 --data M", "--data"),
    ("registry token list --data M", "--data"),
    ("registry token revoke 1 --data M", "--data"),
    ("site extract F --out F", "--out"),
    ("site train --data D --out D/run --state F", "--state"),
    ("site train --data D --out F", "--out"),
    ("site train --data M --out D/run", "--data"),
    ("site analyze F --model D --out F", "--out"),
    ("site analyze F --model M --out D/out", "--model"),
]


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own exit
            code = int(exc.code or 0)
    return code, err.getvalue()


@pytest.mark.parametrize(("command", "named"), CASES, ids=[c for c, _ in CASES])
def test_bad_path_is_one_line_exit_2(tmp_path: Path, command: str, named: str) -> None:
    paths = {"F": tmp_path / "a-file", "D": tmp_path / "a-folder", "M": tmp_path / "missing"}
    paths["F"].write_text("not a folder\n")
    paths["D"].mkdir()
    argv = []
    for word in command.split():
        head, _, rest = word.partition("/")
        argv.append(str(paths[head] / rest if rest else paths[head]) if head in paths else word)
    code, err = _run(argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert named in lines[0] and str(tmp_path) in lines[0] and "Traceback" not in err
    assert not paths["M"].exists()  # commands that only read never create folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]
    assert list(paths["D"].iterdir()) == []
