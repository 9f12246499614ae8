"""Registry hardening: typed cards checked before anything is stored, reads that no stored
row can break, concurrent publishes sharing an upload, and the start-up consistency check."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from threading import Barrier
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from semiofed.privacy.keys import load_private_key, sha256_file
from semiofed.server.registry.app import create_app
from semiofed.server.registry.cards import build_card
from semiofed.server.registry.db import ModelVersion
from semiofed.server.registry.publish import build_manifest, check_stored, publish_local
from semiofed.shared.errors import SemioFedError
from tests.registry_helpers import LiveServer, RegistrySetup, make_registry, make_run_dir, run_main

READ_ROUTES = (
    "/api/v1/models",
    "/api/v1/models/v1",
    "/api/v1/models/v1/card",
    "/api/v1/models/v1/manifest",
    "/api/v1/ledger",
    "/api/v1/audit",
    "/",
    "/versions/v1",
)


def _set(card: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        card = card[key]
    card[last] = value


# (field set in a real card, value, field the 422 must name)
BAD_CARDS = [
    ("privacy", "x", "card.privacy"),
    ("rounds", "abc", "card.rounds"),
    ("sites", 5, "card.sites"),
    ("privacy.per_site", [], "card.privacy.per_site"),
    ("privacy.per_site.site-a.epsilon_final", "high", "card.privacy.per_site.site-a.epsilon_final"),
    ("privacy.per_site.site-a.epsilon_by_round", [{}], "epsilon_by_round.0.round"),
    ("model.architecture_hash", 7, "card.model.architecture_hash"),
    ("training.strategy", {"proximal-mu": 0.1}, "card.training.strategy"),
]


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[RegistrySetup, TestClient, Path]:
    setup = make_registry(tmp_path / "data")
    return setup, TestClient(create_app(setup.registry)), make_run_dir(tmp_path / "run")


def _headers(setup: RegistrySetup, role: str = "coordinator") -> dict[str, str]:
    return {"Authorization": f"Bearer {setup.tokens[role]}"}


def _publish(
    setup: RegistrySetup, client: Any, run: Path, card: dict[str, Any], version: str, sequence: int
) -> httpx.Response:
    weights = run / "model.safetensors"
    key = load_private_key(setup.private_key)
    manifest, sig = build_manifest(card, weights, version, sequence, key)
    h = _headers(setup)
    up = client.post(
        "/api/v1/uploads",
        content=weights.read_bytes(),
        headers={**h, "Content-Type": "application/octet-stream"},
    )
    assert up.status_code == 201, up.text
    return client.post("/api/v1/models", json={"manifest": manifest, "signature": sig}, headers=h)


def _reads_answer(setup: RegistrySetup, tc: TestClient) -> None:
    for route in READ_ROUTES:
        r = tc.get(route, headers=_headers(setup, "auditor"))
        assert r.status_code in (200, 404), (route, r.status_code, r.text[:300])


@pytest.mark.parametrize(("path", "value", "named"), BAD_CARDS)
def test_signed_card_of_wrong_types_is_a_422_and_stores_nothing(
    fresh: tuple[RegistrySetup, TestClient, Path], path: str, value: Any, named: str
) -> None:
    setup, tc, run = fresh
    card = build_card(run)
    _set(card, path, value)
    r = _publish(setup, tc, run, card, "v1", 1)
    assert r.status_code == 422 and named in r.json()["detail"], r.text
    with setup.registry.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0
    assert not (setup.data / "models" / "v1").exists()
    _reads_answer(setup, tc)
    assert _publish(setup, tc, run, build_card(run), "v1", 1).status_code == 201
    _reads_answer(setup, tc)


def test_huge_sequence_and_undecodable_body_are_4xx(
    fresh: tuple[RegistrySetup, TestClient, Path],
) -> None:
    setup, tc, run = fresh
    r = _publish(setup, tc, run, build_card(run), "v1", 2**70)
    assert r.status_code == 422 and "sequence" in r.json()["detail"]
    for route in ("/api/v1/models", "/api/v1/models/v1/retire"):
        r = tc.post(
            route,
            content=b"\xff\xfe\x00not utf-8",
            headers={**_headers(setup), "Content-Type": "text/plain"},
        )
        assert r.status_code == 422, (route, r.status_code, r.text)


def test_no_stored_row_breaks_a_read_route_and_serve_refuses_it(
    fresh: tuple[RegistrySetup, TestClient, Path],
) -> None:
    setup, tc, run = fresh
    publish_local(run, setup.registry, setup.private_key)
    check_stored(setup.registry)  # a published registry passes its start-up check
    assert sorted(p.name for p in (setup.data / "models" / "v1").iterdir()) == [
        "model.safetensors"
    ]  # manifest and signature live in the database only
    with setup.registry.sessions() as session:  # a row written by hand or by an old registry
        row = session.scalar(select(ModelVersion))
        assert row is not None
        manifest = json.loads(row.manifest_json)
        manifest["card"]["privacy"]["per_site"] = {"site-a": {"epsilon_by_round": [{}]}}
        manifest["card"]["rounds"] = "abc"
        row.manifest_json = json.dumps(manifest)
        session.commit()
    _reads_answer(setup, tc)
    card = tc.get("/api/v1/models/v1/card", headers=_headers(setup, "auditor")).json()
    assert card["name"].startswith("unreadable model card") and "card.rounds" in card["name"]
    with pytest.raises(SemioFedError, match="version 'v1'"):
        check_stored(setup.registry)
    code, _, err = run_main("registry", "serve", "--data", str(setup.data), "--port", "1")
    assert code == 2 and "version 'v1'" in err and len(err.strip().splitlines()) == 1


def test_start_up_check_finds_weights_that_disagree(
    fresh: tuple[RegistrySetup, TestClient, Path],
) -> None:
    setup, _, run = fresh
    publish_local(run, setup.registry, setup.private_key)
    weights = setup.data / "models" / "v1" / "model.safetensors"
    weights.unlink()
    weights.write_bytes(b"short")
    with pytest.raises(SemioFedError, match=r"v1.*5 bytes, the database says"):
        check_stored(setup.registry)
    weights.unlink()
    with pytest.raises(SemioFedError, match=r"model\.safetensors: missing"):
        check_stored(setup.registry)


def test_parallel_publishes_sharing_one_upload_all_keep_their_weights(tmp_path: Path) -> None:
    """20 distinct versions uploading the same weights at once, on a real uvicorn: no publish
    may lose the shared upload; each accepted version serves its weights."""
    setup = make_registry(tmp_path / "data")
    run = make_run_dir(tmp_path / "run")
    card, n = build_card(run), 20
    server = LiveServer(setup.data, tmp_path / "server.log")
    server.start()
    barrier = Barrier(n)
    try:
        key = load_private_key(setup.private_key)
        bodies = [
            build_manifest(card, run / "model.safetensors", f"v{i}", i, key)
            for i in range(1, n + 1)
        ]

        def one(i: int) -> httpx.Response:
            manifest, sig = bodies[i - 1]
            with httpx.Client(base_url=server.url, headers=_headers(setup), timeout=60) as c:
                up = c.post(
                    "/api/v1/uploads",
                    content=(run / "model.safetensors").read_bytes(),
                    headers={"Content-Type": "application/octet-stream"},
                )
                assert up.status_code == 201, up.text
                barrier.wait(timeout=60)  # every upload is in before any publish
                return c.post("/api/v1/models", json={"manifest": manifest, "signature": sig})

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(one, range(1, n + 1)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {201, 409}, [
            a.text for a in answers if a.status_code not in (201, 409)
        ]
        refused = [a.json()["detail"] for a in answers if a.status_code == 409]
        assert all("is not after the latest" in d for d in refused), refused
        assert codes[-1] == 201  # the highest sequence is never refused
        site = {"Authorization": f"Bearer {setup.tokens['site']}"}
        expected = sha256_file(run / "model.safetensors")
        for i, code in enumerate(codes, start=1):
            if code == 201:
                got = httpx.get(f"{server.url}/api/v1/models/v{i}/weights", headers=site)
                assert got.status_code == 200 and got.headers["X-Weights-SHA256"] == expected

        # kill -9 while more publishes are in flight: the restarted registry passes its
        # start-up check (no half version) and serves the weights of every version it lists
        more = [
            build_manifest(card, run / "model.safetensors", f"w{i}", n + i, key)
            for i in range(1, 11)
        ]

        def late(i: int) -> int | None:
            manifest, sig = more[i]
            try:
                with httpx.Client(base_url=server.url, headers=_headers(setup), timeout=60) as c:
                    c.post(
                        "/api/v1/uploads",
                        content=(run / "model.safetensors").read_bytes(),
                        headers={"Content-Type": "application/octet-stream"},
                    )
                    return c.post(
                        "/api/v1/models", json={"manifest": manifest, "signature": sig}
                    ).status_code
            except httpx.HTTPError:
                return None  # the server died under it

        assert server.proc is not None
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(late, i) for i in range(10)]
            next(as_completed(futures))
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
        server.proc = None
        server.start()  # `registry serve` runs check_stored: it exits 2 on any disagreement
        listing = httpx.get(f"{server.url}/api/v1/models", headers=site).json()["versions"]
        assert len(listing) >= codes.count(201)
        for v in listing:
            got = httpx.get(f"{server.url}/api/v1/models/{v['version']}/weights", headers=site)
            assert got.status_code == 200 and got.headers["X-Weights-SHA256"] == expected
        with httpx.Client(base_url=server.url) as client:
            assert _publish(setup, client, run, card, "after", 99).status_code == 201
    finally:
        server.stop()
