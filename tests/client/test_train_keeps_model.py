"""`site train` keeps a finished training: recordings the loader skipped (no events file)
are skipped by the test evaluation too, and an events file the evaluation refuses (an
event beyond the end of its recording, named with its line) fails the command only after
the model is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semiofed.shared.cli import main
from semiofed.shared.events import Event, read_events, write_events
from semiofed.shared.recording import SUFFIX, read_header
from semiofed.shared.synth.consortium import generate_consortium


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("consortium")
    generate_consortium(out, sites=1, patients_per_site=5, minutes_per_patient=1, seed=4, workers=1)
    return out / "site-01"


def _train(site: Path, out: Path) -> int:
    return main(
        ["site", "train", "--data", str(site), "--out", str(out), "--no-dp", "--epochs", "1",
         "--no-progress", "--windows-per-patient", "2", "--test-fraction", "0.4"]
    )  # fmt: skip


def _events_files(site: Path) -> list[Path]:
    return sorted(site.rglob("*_events.tsv"))


def test_refused_events_file_fails_only_after_the_model_is_written(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = {p: p.read_bytes() for p in _events_files(site)}
    recordings = sorted(site.rglob("*" + SUFFIX))
    for rec in recordings:  # beside each, a copy without events.tsv: the loader skips them
        rec.with_name("zz-no-events-" + rec.name).write_bytes(rec.read_bytes())
    try:
        for path in saved:  # every recording gets an event past its end
            rec = path.with_name(path.name.replace("_events.tsv", SUFFIX))
            header = read_header(rec)
            end = header["n_frames"] / header["fps"]
            write_events(path, [*read_events(path), Event(end - 1.0, 30.0, "bckg")])
        assert _train(site, tmp_path / "run") == 2
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
        for rec in recordings:
            rec.with_name("zz-no-events-" + rec.name).unlink()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model written to" in err[0] and "ends after the recording" in err[0]
    assert "_events.tsv: line " in err[0] and "zz-no-events" not in err[0]
    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file() and (run / "model_config.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "ends after the recording" in metrics["test"]["error"]
    assert metrics["training"]["epochs_run"] == 1
