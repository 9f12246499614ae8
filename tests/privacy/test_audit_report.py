"""The privacy officer's HTML report renders from a real site state folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest

from semiofed.privacy.approval import approval_fields_of, approve
from semiofed.privacy.audit_trail import TRAIL_FILE, site_trail
from semiofed.privacy.empirical.suite import AuditSettings, run_suite
from semiofed.privacy.ledger import PlannedRun
from semiofed.shared.cli import main
from tests.ledger_helpers import new_ledger, officer

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}
        self.polyline_points = ""
        self.text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "polyline":
            self.polyline_points = str(a.get("points"))
        for attr in ("src", "href"):
            if a.get(attr):
                self.external.append(str(a[attr]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _site_state(state: Path) -> None:
    run_config = state.parent / "run.toml"
    run_config.write_text("[federation]\nrounds = 3\n[privacy]\nnoise-multiplier = 1.2\n")
    approve(approval_fields_of(run_config), state, officer(state))
    ledger = new_ledger(state, 10.0, 1e-3, "rdp")
    trail = site_trail(state)
    for rnd in (1, 2, 3):
        trail.append("round_joined", {"round": rnd})
        planned = PlannedRun("patient", 0.2, 1.5, 1.0, 20, 1e-3, "rdp", dataset_size=20)
        with ledger.begin_run(planned, commit_every=20) as run:
            for _ in range(20):
                run.count_step()
        trail.append(
            "message_sent",
            {"hash": f"{rnd:064x}", "size": 1000 * rnd, "keys": ["arrays"], "kind": "train_reply"},
        )
        trail.append("model_received", {"hash": f"{rnd:064x}", "signature_ok": True})
        trail.append("budget_state", {"epsilon_spent": ledger.spent(), "delta": 1e-3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_suite(
            state,
            AuditSettings(
                epochs=3,
                mia_pool=160,
                mia_shadows=2,
                canaries=200,
                canary_guesses=40,
                inversion_trials=3,
                delta=1e-3,
            ),
            attacks=("mia", "canary", "inversion"),
            progress=False,
        )


def test_report_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    _site_state(state)
    out = tmp_path / "report.html"
    assert main(["audit", "report", "--state", str(state), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    text = " ".join(page.text)
    assert {
        "status",
        "guarantee",
        "independent",
        "approvals",
        "messages",
        "attacks",
        "trail",
    } <= page.ids
    assert page.tags.get("svg") == 1 and len(page.polyline_points.split()) == 3  # 3 rounds
    assert page.external == []  # self-contained
    assert "patient" in text and "0.001" in text  # privacy unit and δ
    assert "verified" in text and "FAILED" not in text
    assert "ledger integrity" in text and "sound: ledger" in text and "3 closed runs" in text
    assert "Every recorded ε agrees" in text
    assert "Membership inference" in text and "One-run canary audit" in text
    assert "Gradient inversion" in text
    summary = json.loads(html.split('id="summary">', 1)[1].split("</script>", 1)[0])
    assert summary["privacy_units"] == ["patient"] and summary["delta"] == 1e-3
    assert 0 < summary["epsilon_spent"] < 10 and summary["budget_left"] == pytest.approx(
        10 - summary["epsilon_spent"]
    )
    msgs = text.split("Messages sent", 1)[1]
    assert "train_reply" in msgs and "6000" in msgs  # 3 messages, 1000+2000+3000 bytes

    # the ClientApp's outbox (STATE/outbox.jsonl) is preferred when present
    outbox = [
        {
            "message_type": "train",
            "sha256": "a" * 64,
            "bytes": 700,
            "records": {"arrays": {"arrays": 12}, "metrics": {"metrics": ["num-examples"]}},
        },
        {
            "message_type": "evaluate",
            "sha256": "b" * 64,
            "bytes": 50,
            "records": {"metrics": {"metrics": ["loss"]}},
        },
    ]
    (state / "outbox.jsonl").write_text("".join(json.dumps(m) + "\n" for m in outbox))
    assert main(["audit", "report", "--state", str(state), "--out", str(out)]) == 0
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    msgs = " ".join(page.text).split("Messages sent", 1)[1]
    assert "evaluate" in msgs and "750" in msgs and "arrays:arrays (1)" in msgs
    if CHROMIUM.exists():  # screenshot of the intact report for a human reviewer
        _screenshot(out, tmp_path)

    # a tampered trail shows up as FAILED
    log = state / TRAIL_FILE
    lines = log.read_text().splitlines()
    entry = json.loads(lines[3])
    entry["payload"]["size"] = 1
    lines[3] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    assert main(["audit", "report", "--state", str(state), "--out", str(out)]) == 0
    assert "FAILED" in out.read_text(encoding="utf-8")
    capsys.readouterr()


def _screenshot(html: Path, tmp_path: Path) -> None:
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    png = tmp_path / "audit_report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1100,2400",
            f"--screenshot={png}",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert png.stat().st_size > 10_000
    shutil.copy(png, artifacts / "audit_report.png")
