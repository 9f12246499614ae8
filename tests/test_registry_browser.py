"""The registry web page in headless Chromium (Debian's, set up by tests/setup_browser.sh)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import sync_playwright

from semiofed.server.registry.publish import publish_local, retire_version
from tests.registry_helpers import LiveServer, make_registry, make_run_dir

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_web_page_lists_versions_and_opens_a_card(tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "run tests/setup_browser.sh first (installs Debian's chromium)"
    setup = make_registry(tmp_path / "data")
    for seed in (1, 2, 3):
        publish_local(
            make_run_dir(tmp_path / f"run{seed}", rounds=4, seed=seed),
            setup.registry,
            setup.private_key,
        )
    with setup.registry.sessions() as session:
        retire_version(session, "v1", "superseded by v2", "cli", None)
    server = LiveServer(setup.data, tmp_path / "server.log")
    server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a fresh --user-data-dir
                executable_path=str(CHROMIUM),
                headless=True,
                args=FLAGS,
                viewport={"width": 1280, "height": 900},
            )
            try:
                page = browser.new_page()
                denied = page.goto(f"{server.url}/")
                assert denied is not None and denied.status == 401
                page.goto(f"{server.url}/?token={setup.tokens['auditor']}")
                assert page.url == f"{server.url}/"  # the token left the address bar for a cookie
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
                assert (
                    page.locator("#limitations li")
                    .first.inner_text()
                    .startswith("Trained on SYNTHETIC")
                )
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "registry.png"), full_page=True)
                # the auditor sees no weights link; the card JSON link works with the cookie
                assert page.locator("a", has_text="weights (safetensors)").count() == 0
                card = page.request.get(f"{server.url}/api/v1/models/v2/card")
                assert card.status == 200 and card.json()["rounds"] == 4
            finally:
                browser.close()
    finally:
        server.stop()
    assert (ARTIFACTS / "registry.png").stat().st_size > 10_000
