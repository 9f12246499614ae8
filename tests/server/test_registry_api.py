"""Registry API: the auth matrix (TestClient and a real uvicorn), publishing rules, cards, schema."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from semiofed.privacy.keys import generate_keypair, load_private_key
from semiofed.server.registry.app import create_app
from semiofed.server.registry.auth import FailedAuthLimiter
from semiofed.server.registry.cards import build_card
from semiofed.server.registry.db import SCHEMA_VERSION, make_engine, migrate, open_database
from semiofed.server.registry.publish import (
    build_manifest,
    build_retirement,
    default_db_url,
    open_registry,
    publish_local,
    retire_local,
)
from semiofed.server.registry.queries import get_version
from semiofed.server.registry_cli import check_transport
from semiofed.shared.cli import build_parser, main
from semiofed.shared.errors import FormatError, SemioFedError
from tests.registry_helpers import (
    LiveServer,
    RegistrySetup,
    make_registry,
    make_run_dir,
    make_tls,
    run_main,
)

ROLES = ("coordinator", "site", "auditor")
ALL, DOWNLOAD, COORD, OVERSIGHT = (
    set(ROLES),
    {"coordinator", "site"},
    {"coordinator"},
    {"coordinator", "auditor"},
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("registry-api")
    setup = make_registry(tmp / "data")
    run = make_run_dir(tmp / "run")
    publish_local(run, setup.registry, setup.private_key)  # v1 stays active
    publish_local(
        make_run_dir(tmp / "run2", seed=1), setup.registry, setup.private_key, "retire-me"
    )
    with setup.registry.sessions() as session:
        manifest = json.loads(get_version(session, "retire-me").manifest_json)
    statement, signature = build_retirement(manifest, "test", load_private_key(setup.private_key))
    # the matrix sends wrong tokens on purpose: a limit it does not reach
    server = LiveServer(setup.data, tmp / "server.log", extra=("--max-auth-failures", "1000"))
    server.start()
    try:
        with (
            TestClient(create_app(setup.registry, FailedAuthLimiter(max_failures=1000))) as tc,
            httpx.Client(base_url=server.url, timeout=30) as live,
        ):
            yield {
                "setup": setup,
                "run": run,
                "retirement": {"statement": statement, "signature": signature},
                "clients": {"testclient": tc, "uvicorn": live},
            }
    finally:
        server.stop()


def _signed_publish_body(
    setup: RegistrySetup, run: Path, client: Any, token: str
) -> dict[str, Any]:
    """Upload the run's weights and return a signed manifest for the next version."""
    listing = client.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"}).json()
    seq = max(v["sequence"] for v in listing["versions"]) + 1
    manifest, sig = build_manifest(
        build_card(run),
        run / "model.safetensors",
        f"v{seq}",
        seq,
        load_private_key(setup.private_key),
    )
    return {"manifest": manifest, "signature": sig}


def _request(
    world: dict[str, Any], client: Any, endpoint: str, token: str | None
) -> httpx.Response:
    setup, run = world["setup"], world["run"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    weights = (run / "model.safetensors").read_bytes()
    if endpoint == "POST /api/v1/models":
        body = _signed_publish_body(setup, run, client, setup.tokens["coordinator"])
        client.post(
            "/api/v1/uploads",
            content=weights,
            headers={
                "Authorization": f"Bearer {setup.tokens['coordinator']}",
                "Content-Type": "application/octet-stream",
            },
        )
        return client.post("/api/v1/models", json=body, headers=headers)
    if endpoint == "POST /api/v1/uploads":
        return client.post(
            "/api/v1/uploads",
            content=weights,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
    if endpoint == "POST /api/v1/models/retire-me/retire":
        return client.post(
            "/api/v1/models/retire-me/retire", json=world["retirement"], headers=headers
        )
    method, path = endpoint.split(" ")
    assert method == "GET"
    return client.get(path, headers=headers, follow_redirects=False)


MATRIX = {
    "GET /openapi.json": ALL,
    "GET /api/v1/models": ALL,
    "GET /api/v1/models/v1": ALL,
    "GET /api/v1/models/v1/card": ALL,
    "GET /api/v1/models/v1/manifest": ALL,
    "GET /api/v1/models/v1/weights": DOWNLOAD,
    "POST /api/v1/uploads": COORD,
    "POST /api/v1/models": COORD,
    "POST /api/v1/models/retire-me/retire": COORD,
    "GET /api/v1/ledger": OVERSIGHT,
    "GET /api/v1/audit": OVERSIGHT,
    "GET /": OVERSIGHT,
    "GET /versions/v1": OVERSIGHT,
}


@pytest.mark.parametrize("transport", ["testclient", "uvicorn"])
@pytest.mark.parametrize("endpoint", list(MATRIX))
def test_auth_matrix(world: dict[str, Any], transport: str, endpoint: str) -> None:
    client = world["clients"][transport]
    tokens = world["setup"].tokens
    assert _request(world, client, endpoint, None).status_code == 401
    invalid = _request(world, client, endpoint, "sfr_not-a-real-token")
    assert invalid.status_code == 401 and invalid.headers["www-authenticate"] == "Bearer"
    for role in ROLES:
        response = _request(world, client, endpoint, tokens[role])
        if role in MATRIX[endpoint]:
            assert 200 <= response.status_code < 300, (role, response.status_code, response.text)
        else:
            assert response.status_code == 403, (role, response.status_code, response.text)
            assert role in response.json()["detail"]


@pytest.mark.parametrize("transport", ["testclient", "uvicorn"])
def test_health_needs_no_token_and_headers_are_strict(
    world: dict[str, Any], transport: str
) -> None:
    response = world["clients"][transport].get("/health")
    assert response.status_code == 200 and response.json() == {
        "status": "ok",
        "schema_version": SCHEMA_VERSION,
    }
    assert "script-src" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_login_form_sets_a_secure_cookie(world: dict[str, Any]) -> None:
    setup = world["setup"]
    tc = TestClient(create_app(setup.registry), base_url="https://testserver")
    form = tc.get("/", follow_redirects=False)
    assert form.status_code == 401 and 'action="/login"' in form.text
    response = tc.post("/login", data={"token": setup.tokens["auditor"]}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert attribute in cookie, cookie
    page = tc.get("/")
    assert page.status_code == 200 and "v1" in page.text and "<svg" in page.text
    # the cookie authenticates reads only: state-changing requests need the header
    assert tc.post("/api/v1/models/v1/retire", json={}).status_code == 401
    assert tc.post("/logout", follow_redirects=False).status_code == 303
    assert tc.get("/", follow_redirects=False).status_code == 401
    wrong = tc.post("/login", data={"token": "sfr_wrong"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text and not tc.cookies
    site = tc.post("/login", data={"token": setup.tokens["site"]}, follow_redirects=False)
    assert site.status_code == 403 and not tc.cookies
    assert tc.post("/login", content=b"token=" + b"x" * 5000).status_code == 413


@pytest.mark.parametrize("transport", ["testclient", "uvicorn"])
@pytest.mark.parametrize(
    "url",
    [
        "/?token=TOKEN",
        "/api/v1/models?status=active&token=TOKEN",
        "/api/v1/models?access_token=TOKEN",
        "/api/v1/models?api-key=TOKEN",
        "/api/v1/models?q=TOKEN",
        "/api/v1/models/TOKEN",
        "/health?token=x",
    ],
)
def test_a_token_in_a_url_is_refused(world: dict[str, Any], transport: str, url: str) -> None:
    """Even with a valid header as well: the URL has already leaked the token."""
    tokens = world["setup"].tokens
    response = world["clients"][transport].get(
        url.replace("TOKEN", tokens["auditor"]),
        headers={"Authorization": f"Bearer {tokens['auditor']}"},
    )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "a token in the URL" in detail and "Authorization: Bearer" in detail
    assert tokens["auditor"] not in response.text


def test_card_ledger_and_audit_contents(world: dict[str, Any]) -> None:
    tc, tokens = world["clients"]["testclient"], world["setup"].tokens
    auditor = {"Authorization": f"Bearer {tokens['auditor']}"}
    card = tc.get("/api/v1/models/v1/card", headers=auditor).json()
    assert card["model"]["architecture_hash"] == "3" * 64
    assert card["model"]["weights"] == {
        "format": "safetensors",
        "tensors": 2,
        "parameters": 38,
        "dtypes": ["F32"],
    }
    assert card["sites"] == ["site-a", "site-b", "site-c"] and card["rounds"] == 3
    site_c = card["privacy"]["per_site"]["site-c"]
    assert (
        site_c["privacy_unit"] == "patient"
        and site_c["delta"] == 1e-5
        and site_c["accountant"] == "rdp"
    )
    assert [p["epsilon"] for p in site_c["epsilon_by_round"]] == [1.5, 3.0, 4.5]
    assert site_c["epsilon_final"] == 4.5
    assert [m["round"] for m in card["metrics"]] == [1, 2, 3] and card["metrics"][1][
        "macro-f1"
    ] == 0.4
    assert card["name"] == "run-0" and card["training"] == {
        "run_id": "1000",
        "started_at": "2025-01-01T10:00:00Z",
        "finished_at": "2025-01-01T10:05:00Z",
        "strategy": "fedavg",  # the strategy's name, not its parameter table
        "data": "synthetic",
        "configuration": card["training"]["configuration"],
    }
    assert card["limitations"][0].startswith("Trained on SYNTHETIC")
    assert "Not a medical device" in card["intended_use"]
    assert card["training"]["configuration"]["training"]["noise-multiplier"] == 1.1
    ledger = tc.get("/api/v1/ledger", params={"version": "v1"}, headers=auditor).json()["entries"]
    assert len(ledger) == 9 and {e["site"] for e in ledger} == {"site-a", "site-b", "site-c"}
    audit = tc.get("/api/v1/audit", headers=auditor).json()
    assert audit["summary"]["publish"] >= 2 and audit["summary"]["token_create"] == 3
    assert audit["downloads"].get("v1", 0) >= 1  # the matrix downloaded it


def _coord(setup: RegistrySetup) -> dict[str, str]:
    return {"Authorization": f"Bearer {setup.tokens['coordinator']}"}


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[RegistrySetup, TestClient, Path]:
    setup = make_registry(tmp_path / "data")
    return setup, TestClient(create_app(setup.registry)), make_run_dir(tmp_path / "run")


def test_publish_rejections(fresh: tuple[RegistrySetup, TestClient, Path], tmp_path: Path) -> None:
    setup, tc, run = fresh
    h = _coord(setup)
    weights = (run / "model.safetensors").read_bytes()
    assert tc.post("/api/v1/uploads", content=b"not safetensors", headers=h).status_code == 422
    key = load_private_key(setup.private_key)
    manifest, sig = build_manifest(build_card(run), run / "model.safetensors", "v1", 1, key)
    # weights not uploaded yet
    assert (
        tc.post(
            "/api/v1/models", json={"manifest": manifest, "signature": sig}, headers=h
        ).status_code
        == 422
    )
    up = tc.post("/api/v1/uploads", content=weights, headers=h)
    assert up.status_code == 201 and up.json()["size"] == len(weights)
    # signed by a key the registry does not pin
    other = generate_keypair(tmp_path / "other.pem")
    _, bad_sig = build_manifest(build_card(run), run / "model.safetensors", "v1", 1, other)
    forged = {**manifest, "signer": manifest["signer"]}
    r = tc.post("/api/v1/models", json={"manifest": forged, "signature": bad_sig}, headers=h)
    assert r.status_code == 400 and "signature" in r.json()["detail"]
    # altered after signing
    altered = json.loads(json.dumps(manifest))
    altered["card"]["privacy"]["per_site"]["site-a"]["epsilon_final"] = 0.01
    assert (
        tc.post(
            "/api/v1/models", json={"manifest": altered, "signature": sig}, headers=h
        ).status_code
        == 400
    )
    assert (
        tc.post(
            "/api/v1/models", json={"manifest": {"format": "x"}, "signature": sig}, headers=h
        ).status_code
        == 422
    )
    assert (
        tc.post(
            "/api/v1/models", json={"manifest": manifest, "signature": sig}, headers=h
        ).status_code
        == 201
    )
    # same version again, and an older sequence under a new name
    tc.post("/api/v1/uploads", content=weights, headers=h)
    assert (
        tc.post(
            "/api/v1/models", json={"manifest": manifest, "signature": sig}, headers=h
        ).status_code
        == 409
    )
    m2, s2 = build_manifest(build_card(run), run / "model.safetensors", "v1b", 1, key)
    assert (
        tc.post("/api/v1/models", json={"manifest": m2, "signature": s2}, headers=h).status_code
        == 409
    )
    setup.registry.store.max_upload_bytes = 10
    assert tc.post("/api/v1/uploads", content=weights, headers=h).status_code == 413
    assert not list(
        setup.registry.store.uploads.glob(".upload.*")
    )  # no half-written upload left behind
    assert sorted(p.name for p in setup.registry.store.models.iterdir()) == ["v1"]


def test_retired_version_is_not_served_to_sites(
    fresh: tuple[RegistrySetup, TestClient, Path],
) -> None:
    setup, tc, run = fresh
    publish_local(run, setup.registry, setup.private_key)
    publish_local(make_run_dir(run.parent / "run2", seed=2), setup.registry, setup.private_key)
    with setup.registry.sessions() as session:
        manifest = json.loads(get_version(session, "v1").manifest_json)
    # the registry stores only a retirement the pinned coordinator key signed, for this version
    other = generate_keypair(run.parent / "other.pem")
    for key, version, refusal in (
        (other, "v1", "signature rejected"),
        (load_private_key(setup.private_key), "v2", "the retirement is for version 'v1'"),
    ):
        statement, signature = build_retirement(manifest, "forged", key)
        r = tc.post(
            f"/api/v1/models/{version}/retire",
            json={"statement": statement, "signature": signature},
            headers=_coord(setup),
        )
        assert r.status_code == 400 and refusal in r.json()["detail"], r.text
    listing = tc.get("/api/v1/models", headers=_coord(setup)).json()["versions"]
    assert [v["status"] for v in listing] == ["active", "active"]  # nothing was retired
    retire_local(setup.registry, "v2", "superseded", setup.private_key)
    retire_local(setup.registry, "v1", "bad calibration", setup.private_key)
    site = {"Authorization": f"Bearer {setup.tokens['site']}"}
    r = tc.get("/api/v1/models/v1/weights", headers=site)
    assert r.status_code == 410 and "bad calibration" in r.json()["detail"]
    assert tc.get("/api/v1/models", params={"status": "active"}, headers=site).json() == {
        "versions": []
    }
    assert tc.get("/api/v1/models/v1/weights", headers=_coord(setup)).status_code == 200
    assert tc.get("/api/v1/models/nope", headers=site).status_code == 404
    body = {"statement": {}, "signature": ""}
    assert (
        tc.post("/api/v1/models/nope/retire", json=body, headers=_coord(setup)).status_code == 404
    )


def test_run_dir_validation_names_file_and_field(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run")
    card = build_card(run)
    assert card["privacy"]["privacy_unit"] == "patient"

    (run / "run.json").write_text(json.dumps({"rounds": "three"}))
    with pytest.raises(FormatError, match=r"run\.json: rounds must be"):
        build_card(run)
    (run / "run.json").write_text(
        json.dumps({"rounds": [{"round": 1, "sites": {"a": {"epsilon": "big"}}}]})
    )
    with pytest.raises(FormatError, match=r"rounds\[0\]\.sites\.a\.epsilon must be a number"):
        build_card(run)
    (run / "run.json").write_text("{}")  # every run.json field is optional
    minimal = build_card(run)
    assert (
        minimal["rounds"] == 0 and minimal["privacy"]["per_site"] == {} and minimal["sites"] == []
    )
    (run / "run.json").write_text(json.dumps({"architecture_hash": "other"}))
    with pytest.raises(FormatError, match=r"differs from model_config\.json"):
        build_card(run)
    (run / "run.json").unlink()
    with pytest.raises(FormatError, match=r"run\.json: missing"):
        build_card(run)
    (run / "run.json").write_text("{}")
    config = json.loads((run / "model_config.json").read_text())
    del config["architecture_hash"]
    (run / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match=r"model_config\.json: field 'architecture_hash' missing"):
        build_card(run)
    (run / "model_config.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match=r"model_config\.json: must hold a JSON object"):
        build_card(run)
    (run / "model_config.json").unlink()
    with pytest.raises(FormatError, match=r"model_config\.json: missing"):
        build_card(run)
    (run / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(FormatError, match=r"model\.safetensors: .*not a valid safetensors"):
        build_card(run)
    (run / "model.safetensors").unlink()
    with pytest.raises(FormatError, match=r"model\.safetensors: missing"):
        build_card(run)


def test_schema_migrates_forward_and_refuses_newer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url)
    assert migrate(engine, target=1) == 1
    with engine.begin() as conn:
        tables = {
            r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        }
        assert "tokens" in tables and "audit_events" not in tables
        conn.execute(
            text(
                "INSERT INTO tokens (token_sha256, role, label, created_at) VALUES ('x', 'site', '', 'now')"
            )
        )
        for column in ("retirement_json", "retirement_signature"):  # as schema 1 had it
            conn.execute(text(f"ALTER TABLE model_versions DROP COLUMN {column}"))
    open_database(url)  # migrates 1 -> 3, keeping the data
    with engine.begin() as conn:
        columns = {r[1] for r in conn.execute(text("PRAGMA table_info(model_versions)"))}
        assert {"retirement_json", "retirement_signature"} <= columns
        assert (
            conn.execute(text("SELECT max(version) FROM schema_version")).scalar() == SCHEMA_VERSION
        )
        assert conn.execute(text("SELECT count(*) FROM tokens")).scalar() == 1
        conn.execute(text("SELECT count(*) FROM audit_events"))
        conn.execute(text("INSERT INTO schema_version VALUES (99, 'future')"))
    with pytest.raises(SemioFedError, match="newer than this SemioFed"):
        open_database(url)
    with pytest.raises(SemioFedError, match=r"unsupported database|cannot open"):
        open_database("mysql://u@h/db")


def test_cli_direct_mode_tokens_publish_retire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    assert (
        main(["registry", "serve", "--data", data]) == 2
    )  # no coordinator key yet: refuses to start
    assert "registry keygen" in capsys.readouterr().err
    assert main(["registry", "keygen", "--data", data]) == 0
    assert main(["registry", "keygen", "--data", data]) == 2  # never overwrites a key
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "registry",
                "token",
                "create",
                "--role",
                "site",
                "--label",
                "hospital A",
                "--data",
                data,
            ]
        )
        == 0
    )
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["registry", "publish", str(tmp_path / "missing"), "--data", data]) == 2
    assert "missing: not a run directory" in capsys.readouterr().err
    assert main(["registry", "publish", str(make_run_dir(tmp_path / "run")), "--data", data]) == 0
    assert capsys.readouterr().out.startswith("published v1 ")
    assert (
        main(["registry", "publish", str(tmp_path / "run"), "--data", data, "--url", "http://x"])
        == 2
    )
    assert "needs a coordinator token" in capsys.readouterr().err
    assert main(["registry", "token", "list", "--data", data]) == 0
    listing = capsys.readouterr().out
    assert "hospital A" in listing and token not in listing

    registry = open_registry(
        default_db_url(data), data, Path(data) / "keys" / "coordinator.pub.pem"
    )
    tc = TestClient(create_app(registry))
    assert tc.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert main(["registry", "token", "revoke", "1", "--data", data]) == 0
    assert tc.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert main(["registry", "retire", "v1", "--reason", "test", "--data", data]) == 0
    assert main(["registry", "retire", "v9", "--data", data]) == 2
    assert "no version 'v9'" in capsys.readouterr().err


def test_failed_authentications_are_rate_limited_per_address(tmp_path: Path) -> None:
    setup = make_registry(tmp_path / "data")
    now = [1000.0]
    app = create_app(
        setup.registry, FailedAuthLimiter(max_failures=3, window=60, clock=lambda: now[0])
    )
    attacker = TestClient(app, base_url="https://testserver", client=("203.0.113.5", 50000))
    other = TestClient(app, client=("198.51.100.7", 50000))
    auditor = {"Authorization": f"Bearer {setup.tokens['auditor']}"}
    for guess in ("sfr_a", "sfr_b", "sfr_c"):
        r = attacker.get("/api/v1/models", headers={"Authorization": f"Bearer {guess}"})
        assert r.status_code == 401
    blocked = attacker.get("/api/v1/models", headers=auditor)  # now even a right token
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60"
    assert "too many failed authentications from 203.0.113.5" in blocked.json()["detail"]
    login = attacker.post("/login", data={"token": setup.tokens["auditor"]})
    assert login.status_code == 429 and not attacker.cookies
    assert other.get("/api/v1/models", headers=auditor).status_code == 200  # others unaffected
    now[0] += 59
    assert attacker.get("/api/v1/models", headers=auditor).headers["retry-after"] == "1"
    now[0] += 1  # the window has passed
    assert attacker.get("/api/v1/models", headers=auditor).status_code == 200


def test_failed_authentication_memory_is_bounded() -> None:
    limiter = FailedAuthLimiter(max_failures=1, window=60, max_clients=2, clock=lambda: 0.0)
    for client in ("a", "b", "c"):
        limiter.failed(client)
    assert [limiter.retry_after(c) for c in ("a", "b", "c")] == [0, 60, 60]  # "a" forgotten


def _serve_args(**overrides: Any) -> argparse.Namespace:
    args = build_parser().parse_args(["registry", "serve"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_serve_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert check_transport(_serve_args(host=host)) == "http"
    assert check_transport(_serve_args(host="0.0.0.0", insecure_http=True)) == "http"
    tls = make_tls(tmp_path / "certs")
    pair = {"certfile": str(tls.superlink_cert), "keyfile": str(tls.superlink_key)}
    assert check_transport(_serve_args(host="0.0.0.0", **pair)) == "https"
    code, _, err = run_main("registry", "serve", "--host", "0.0.0.0", "--data", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--host 0.0.0.0: refusing plain HTTP on a non-loopback address" in err
    bad = [
        ({"certfile": pair["certfile"]}, "go together"),
        ({**pair, "certfile": str(tmp_path / "no.crt")}, "no.crt: no such file"),
        ({**pair, "keyfile": str(tls.ca_key)}, "not a matching PEM certificate"),
    ]
    for overrides, message in bad:
        with pytest.raises(SemioFedError, match=message):
            check_transport(_serve_args(host="0.0.0.0", **overrides))
