"""The registry web page in headless Chromium (Debian's, set up by tests/setup_browser.sh),
over TLS, signed in through the login form."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import sync_playwright

from semiofed.server.registry.cards import EXPLANATIONS_FILE, EXPLANATIONS_FORMAT
from semiofed.server.registry.publish import publish_local, retire_local
from tests.registry_helpers import LiveServer, make_registry, make_run_dir, make_tls

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def spki_pin(cert: Path) -> str:
    """Chromium's pin of a certificate's key (base64 SHA-256 of its SubjectPublicKeyInfo)."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


EXPLANATIONS = {
    "format": EXPLANATIONS_FORMAT,
    "data": "public: SemioFed motion simulator",
    "what_it_is": "How the model responds on public data.",
    "what_it_is_not": "Not a statement about any patient.",
    "classes": {
        c: {
            "windows": 12,
            "explains": "type probability",
            "stream_contributions": {"body": 0.5, "face": 0.1, "motion": 0.0},
            "stream_presence": {"body": 1.0, "face": 0.9, "motion": 0.0},
            "region_shares": {"face": 0.6 if c == "automatisms" else 0.1, "trunk": 0.3},
        }
        for c in ("clonic", "automatisms")
    },
}


def test_web_page_lists_versions_and_opens_a_card(tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "run tests/setup_browser.sh first (installs Debian's chromium)"
    setup = make_registry(tmp_path / "data")
    for seed in (1, 2, 3):
        run = make_run_dir(tmp_path / f"run{seed}", rounds=4, seed=seed)
        if seed == 2:  # v2 carries global explanations (the format `registry explain` writes)
            (run / EXPLANATIONS_FILE).write_text(json.dumps(EXPLANATIONS))
        publish_local(run, setup.registry, setup.private_key)
    retire_local(setup.registry, "v1", "superseded by v2", setup.private_key)
    tls = make_tls(tmp_path / "certs")
    server = LiveServer(setup.data, tmp_path / "server.log", tls)
    server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a fresh --user-data-dir
                executable_path=str(CHROMIUM),
                headless=True,
                # trust exactly the test server's key (no blanket certificate-error bypass)
                args=[
                    *FLAGS,
                    f"--ignore-certificate-errors-spki-list={spki_pin(tls.superlink_cert)}",
                ],
                viewport={"width": 1280, "height": 900},
            )
            try:
                page = browser.new_page()
                denied = page.goto(f"{server.url}/")
                assert denied is not None and denied.status == 401  # the login form
                page.fill("#token", "sfr_wrong")
                page.click("#sign-in")
                assert "not valid" in page.locator("#login-message").inner_text()
                in_url = page.goto(f"{server.url}/?token={setup.tokens['auditor']}")
                assert in_url is not None and in_url.status == 400  # never in a URL
                page.goto(f"{server.url}/login")
                page.fill("#token", setup.tokens["auditor"])
                page.click("#sign-in")
                page.wait_for_url(f"{server.url}/")
                [cookie] = browser.cookies()
                assert (
                    cookie["name"] == "semiofed_token"
                    and cookie["value"] == setup.tokens["auditor"]
                )
                assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                rows = page.locator("tr.version-row")
                assert [rows.nth(i).get_attribute("data-version") for i in range(rows.count())] == [
                    "v3",
                    "v2",
                    "v1",
                ]
                assert page.locator("tr[data-version=v1] .status-retired").inner_text() == "retired"
                assert page.locator("svg.plot polyline.series").count() == 3  # ε of three sites
                page.locator("a.version-link", has_text="v2").click()
                page.wait_for_url(f"{server.url}/versions/v2")
                assert "Model card" in page.locator("#card-title").inner_text()
                assert page.locator("#architecture-hash").inner_text() == "3" * 64
                assert page.locator("#privacy tbody tr").count() == 3
                assert "patient" in page.locator("#privacy").inner_text()
                assert page.locator("#metrics tbody tr").count() == 4
                assert page.locator("#explanations tbody tr").count() == 2
                auto = page.locator("#explanations tbody tr", has_text="automatisms")
                assert "face 60%, trunk 30%" in auto.inner_text()
                assert "absent" in auto.inner_text()  # no optical flow in the public data
                assert (
                    page.locator("#limitations li")
                    .first.inner_text()
                    .startswith("Trained on SYNTHETIC")
                )
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "registry.png"), full_page=True)
                # the auditor sees no weights link; the card JSON link works with the cookie
                assert page.locator("a", has_text="weights (safetensors)").count() == 0
                card = page.goto(f"{server.url}/api/v1/models/v2/card")
                assert card is not None and card.status == 200 and card.json()["rounds"] == 4
                page.go_back()
                page.click("#sign-out")
                page.wait_for_url(f"{server.url}/login")
                assert browser.cookies() == []
            finally:
                browser.close()
    finally:
        server.stop()
    assert (ARTIFACTS / "registry.png").stat().st_size > 10_000
