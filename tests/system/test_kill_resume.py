"""kill -9 at seeded random moments of each long command, then a rerun loses nothing.

For each command (``site train`` with DP, ``site calibrate``, ``site analyze``,
``audit attack``; ``site extract``'s is tests/client/test_extract_resume.py) on tiny inputs: an uninterrupted reference run gives the
command's duration D and its result; then the real command runs as a subprocess in its own
session and its process group is killed with SIGKILL at ``KILLS`` points drawn from a fixed
seed in (0.2 D, 0.95 D), each kill followed by a restart (so later kills hit a resumed run).
After every kill every file under its final name parses (a killed writer's hidden temporary
file may remain until the next write of that file removes it), the ledger and audit trail stay
sound and what an earlier run finished is unchanged; after the last restart, which completes,
no temporary file is left and the result equals the reference's (DP training: its noise is
secret, so the model's configuration, split and step count are compared, and the ledger's
history and the trail are checked). Nothing is asserted about timing: a kill that comes after the
run ended is only a run that was not interrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.ledger_helpers import new_ledger

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SEED = 18
KILLS = 2
TIMEOUT = 300.0
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _semiofed(argv: list[str], timeout: float = TIMEOUT) -> float:
    """Run ``semiofed ARGV`` to completion (exit 0 asserted); returns its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "semiofed.shared.cli", *argv],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.monotonic() - t0


def _kill_at(argv: list[str], seconds: float) -> bool:
    """Start ``semiofed ARGV`` in a new session and SIGKILL its process group after
    ``seconds``; True when it was still running then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "semiofed.shared.cli", *argv],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        return True
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group this test created
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damaged(root: Path, temporary_ok: bool = False) -> list[str]:
    """Files under ``root`` left half-written: a file under its final name that does not
    parse, or (unless ``temporary_ok``: right after a kill) a temporary file."""
    bad = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        name = str(p.relative_to(root))
        if ".tmp" in p.name:
            if not temporary_ok:
                bad.append(f"{name}: temporary file left")
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            elif p.suffix == ".jsonl":
                text = p.read_text(encoding="utf-8")
                assert text == "" or text.endswith("\n")
                for line in text.splitlines():
                    json.loads(line)
            elif p.suffix == ".npz":
                with np.load(p) as z:
                    for k in z.files:
                        z[k]
            elif p.suffix == ".safetensors":
                from safetensors.numpy import load_file

                load_file(p)
            elif p.suffix == ".html":
                assert p.read_text(encoding="utf-8").rstrip().endswith("</html>")
            elif p.suffix == ".pem":
                assert p.read_bytes().rstrip().endswith(b"-----")
        except Exception as exc:  # any failure to parse is damage
            bad.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")
    return bad


@dataclass
class Case:
    """One long command: ``argv`` runs it with outputs under a work folder; ``roots`` are
    the folders it writes; ``kept`` the files that, once there, must never change again
    (finished work is neither damaged nor redone); ``result`` what must equal the
    reference's; ``sound`` checks state that must stay consistent after a kill."""

    argv: Callable[[Path], list[str]]
    roots: Callable[[Path], list[Path]]
    result: Callable[[Path], object]
    kept: Callable[[Path], list[Path]] = lambda work: []
    prepare: Callable[[Path], None] = lambda work: None
    sound: Callable[[Path], None] = lambda work: None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny inputs: one site of 5 patients × 1 min."""
    from semiofed.shared.synth.consortium import generate_consortium

    root = tmp_path_factory.mktemp("kill")
    generate_consortium(
        root, sites=1, patients_per_site=5, minutes_per_patient=1, seed=3, workers=1
    )
    return root


def _report(work: Path) -> object:
    doc = json.loads((work / "an" / "report.json").read_text(encoding="utf-8"))
    doc.pop("generated_utc")
    return doc


def _attacks(work: Path) -> object:
    out = {}
    for p in sorted((work / "state" / "audits").glob("*.json")):
        doc = json.loads(p.read_text(encoding="utf-8"))
        doc.pop("time")
        out[p.name] = doc
    return out


def _ledger_and_trail(work: Path) -> None:
    from semiofed.privacy.audit_trail import verify
    from semiofed.privacy.ledger import PrivacyLedger

    PrivacyLedger(work / "state").check_history()
    trail = work / "state" / "audit" / "trail.jsonl"
    if trail.exists():
        res = verify(trail)
        assert res.ok, res.summary()


def _trained(work: Path) -> object:
    from semiofed.privacy.ledger import PrivacyLedger

    runs = PrivacyLedger(work / "state").load()["runs"]
    cfg = json.loads((work / "run" / "model_config.json").read_text(encoding="utf-8"))
    metrics = json.loads((work / "run" / "metrics.json").read_text(encoding="utf-8"))
    done = [r for r in runs if r.get("status") == "completed"]
    return cfg, sorted(metrics["split"]["train"]), metrics["privacy"]["steps"], len(done) >= 1


def _copy_model(inputs: Path) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        shutil.copytree(inputs / "model", work / "model")

    return prepare


def _new_dp_state(inputs: Path) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        new_ledger(work / "state", epsilon_max=1e6, data=inputs / "site-01")

    return prepare


def _model_files(work: Path) -> list[Path]:
    return [work / "model" / f for f in ("model.safetensors", "model_config.json", "metrics.json")]


SITE = ["--window-hop", "5", "--window-seconds", "5"]


def cases(inputs: Path) -> dict[str, Case]:
    site = str(inputs / "site-01")
    rec = str(sorted((inputs / "site-01").rglob("*_keypoints.npz"))[0])
    held_out = ["sub-01-002", "sub-01-005"]
    return {
        "train": Case(
            prepare=_new_dp_state(inputs),
            argv=lambda w: ["site", "train", "--data", site, "--out", str(w / "run"),
                            "--state", str(w / "state"), "--epochs", "1", "--no-progress",
                            "--windows-per-patient", "2", "--batch-size", "2", *SITE],
            roots=lambda w: [w / "run", w / "state"],
            result=_trained,
            sound=_ledger_and_trail,
        ),
        "calibrate": Case(
            prepare=_copy_model(inputs),
            argv=lambda w: ["site", "calibrate", "--model", str(w / "model"), "--data", site,
                            "--held-out", *held_out, "--state", str(w / "state")],
            roots=lambda w: [w / "model", w / "state"],
            kept=_model_files,
            result=lambda w: (w / "model" / "calibration.json").read_text(encoding="utf-8"),
        ),
        "analyze": Case(
            prepare=_copy_model(inputs),
            argv=lambda w: ["site", "analyze", rec, "--model", str(w / "model"),
                            "--out", str(w / "an"), "--state", str(w / "state"), "--no-explain"],
            roots=lambda w: [w / "an", w / "state"],
            kept=_model_files,
            result=_report,
        ),
        "attack": Case(
            prepare=lambda w: (w / "state").mkdir(parents=True),
            argv=lambda w: ["audit", "attack", "--state", str(w / "state"), "--quick",
                            "--epochs", "1", "--only", "mia", "canary", "--device", "cpu"],
            roots=lambda w: [w / "state"],
            result=_attacks,
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def model(inputs: Path) -> Path:
    """The reference DP training: its folder doubles as the model calibrate and analyze use."""
    case = cases(inputs)["train"]
    work = inputs / "ref-train"
    case.prepare(work)
    seconds = _semiofed(case.argv(work))
    shutil.copytree(work / "run", inputs / "model")
    (inputs / "ref-train.seconds").write_text(f"{seconds}")
    return inputs / "model"


@pytest.mark.parametrize("name", ["train", "calibrate", "analyze", "attack"])
def test_killed_command_reruns_to_the_uninterrupted_result(
    name: str, inputs: Path, model: Path
) -> None:
    case = cases(inputs)[name]
    ref = inputs / f"ref-{name}"
    if name == "train":
        seconds = float((inputs / "ref-train.seconds").read_text())
    else:
        case.prepare(ref)
        seconds = _semiofed(case.argv(ref))
    expected = case.result(ref)

    work = inputs / f"killed-{name}"
    case.prepare(work)
    rng = random.Random(f"{SEED}-{name}")
    killed = 0
    kept: dict[Path, str] = {}
    for at in sorted(rng.uniform(0.2, 0.95) * seconds for _ in range(KILLS)):
        before = {
            p
            for r in case.roots(work)
            if r.exists()
            for p in r.rglob("*")
            if p.is_file() and ".tmp" not in p.name
        }
        killed += _kill_at(case.argv(work), at)
        for root in case.roots(work):
            assert not damaged(root, temporary_ok=True), (name, at, damaged(root, True))
        assert all(p.is_file() for p in before), (name, at, [p for p in before if not p.exists()])
        case.sound(work)
        for p, digest in kept.items():
            assert _digest(p) == digest, (name, at, f"{p} changed")
        kept.update({p: _digest(p) for p in case.kept(work) if p.is_file()})
    _semiofed(case.argv(work))
    for p, digest in kept.items():
        assert _digest(p) == digest, (name, f"{p} changed")
    for root in case.roots(work):
        assert not damaged(root), damaged(root)
    case.sound(work)
    assert case.result(work) == expected
    print(f"{name}: reference {seconds:.1f} s, {killed} of {KILLS} kills hit a running command")


def test_a_killed_writers_temporary_file_goes_with_the_next_write(tmp_path: Path) -> None:
    from semiofed.shared.atomic import atomic_write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.json.{dead.pid}.x1.tmp"
    live = tmp_path / f".run.json.{os.getpid()}.x2.tmp"  # a writer still at work
    other = tmp_path / f".runs.json.{dead.pid}.x3.tmp"  # another file's
    # a live writer's temp of run.json.<digits> (its name part parses like a dead pid)
    sibling = tmp_path / f".run.json.{dead.pid}.{os.getpid()}.x4.tmp"
    for p in (stale, live, other, sibling):
        p.write_text("half")
    atomic_write_text(tmp_path / "run.json", "{}")
    left = [live.name, other.name, sibling.name, "run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(left)
