"""The registry as deployed: a real uvicorn (`semiofed registry serve`) over TLS with a
certificate of a test CA, the CLI against it (verifying the certificate against that CA), a
restart on the same SQLite file, and schemathesis fuzzing of the OpenAPI description."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from semiofed.client.model_pull import VerificationError, current_model, pull
from semiofed.privacy.keys import generate_keypair
from tests.registry_helpers import LiveServer, make_run_dir, make_tls, run_main

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Coordinator key, one token per role (`semiofed registry …`) and a running server."""
    tmp = tmp_path_factory.mktemp("registry-live")
    data = str(tmp / "data")
    assert run_main("registry", "keygen", "--data", data)[0] == 0
    assert (tmp / "data" / "keys" / "coordinator.pem").stat().st_mode & 0o777 == 0o600
    tokens = {}
    for role in ("coordinator", "site", "auditor"):
        code, out, _ = run_main("registry", "token", "create", "--role", role, "--data", data)
        assert code == 0 and "shown only once" in out
        tokens[role] = out.strip().splitlines()[-1]
    db_bytes = b"".join(p.read_bytes() for p in (tmp / "data").glob("registry.db*"))
    assert not any(t.encode() in db_bytes for t in tokens.values())  # only hashes are stored
    tls = make_tls(tmp / "certs")
    server = LiveServer(tmp / "data", tmp / "server.log", tls, log_level="info")
    server.start()
    assert server.url.startswith("https://")
    try:
        yield {"tmp": tmp, "data": data, "tokens": tokens, "server": server, "ca": str(tls.ca_cert)}
    finally:
        server.stop()


def test_publish_pull_restart(deployed: dict) -> None:
    tmp, data, tokens, server, ca = (
        deployed["tmp"],
        deployed["data"],
        deployed["tokens"],
        deployed["server"],
        deployed["ca"],
    )
    run = str(make_run_dir(tmp / "run"))
    publish = ("registry", "publish", run, "--data", data)
    code, _, err = run_main(*publish, "--url", server.url, "--ca", ca, "--token", tokens["site"])
    assert code == 2 and "HTTP 403" in err
    # the certificate is verified: without the test CA the system's trust store refuses it
    code, _, err = run_main(*publish, "--url", server.url, "--token", tokens["coordinator"])
    assert code == 2 and "CERTIFICATE_VERIFY_FAILED" in err and len(err.strip().splitlines()) == 1
    plain = server.url.replace("https://127.0.0.1", "http://registry.example.org")
    code, _, err = run_main(*publish, "--url", plain, "--token", tokens["coordinator"])
    assert code == 2 and "plain HTTP to a non-loopback host" in err
    code, out, err = run_main(
        *publish, "--url", server.url, "--ca", ca,
        env={"SEMIOFED_REGISTRY_TOKEN": tokens["coordinator"]},
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("published v1 ")

    pub = Path(data) / "keys" / "coordinator.pub.pem"
    state = tmp / "site-state"
    site_pull = (
        "site",
        "pull",
        "--url",
        server.url,
        "--token",
        tokens["site"],
        "--coordinator-key",
        str(pub),
        "--ca",
        ca,
    )
    code, out, err = run_main(*site_pull, "--state", str(state))
    assert code == 0, err
    assert "installed v1" in out and "signature verified" in out
    assert "site-c: ε=4.5 δ=1e-05 (patient, rdp)" in out
    assert current_model(state) == (state / "models" / "v1").resolve()

    generate_keypair(tmp / "wrong.pem", tmp / "wrong.pub.pem")
    with server.client() as client:
        with pytest.raises(VerificationError, match="refusing to install"):
            pull(client, tokens["site"], tmp / "wrong.pub.pem", tmp / "s2")
        assert current_model(tmp / "s2") is None
        site = {"Authorization": f"Bearer {tokens['site']}"}
        weights_before = client.get("/api/v1/models/v1/weights", headers=site).content

    server.stop()
    server.start()  # same SQLite file, same data folder
    with server.client() as client:
        listing = client.get(
            "/api/v1/models", headers={"Authorization": f"Bearer {tokens['auditor']}"}
        )
        assert listing.status_code == 200 and [
            v["version"] for v in listing.json()["versions"]
        ] == ["v1"]
        assert client.get("/api/v1/models/v1/weights", headers=site).content == weights_before
    code, out, _ = run_main(*site_pull, "--state", str(state))
    assert code == 0 and "already installed v1" in out

    retire = ("registry", "retire", "v1", "--reason", "superseded", "--url", server.url)
    code, _, err = run_main(*retire, "--ca", ca, "--token", tokens["coordinator"], "--data", data)
    assert code == 0, err
    with server.client(headers={"Authorization": f"Bearer {tokens['auditor']}"}) as client:
        card = client.get("/api/v1/models/v1").json()
        assert card["status"] == "retired" and card["retired_reason"] == "superseded"
        # a token in a URL is refused, and the access log (info level) never holds one
        leaked = client.get("/api/v1/models", params={"token": tokens["coordinator"]})
        assert leaked.status_code == 400 and "a token in the URL" in leaked.json()["detail"]
    code, _, err = run_main(*site_pull, "--state", str(tmp / "s3"))
    assert code == 2 and "no active model version" in err
    code, _, err = run_main(*site_pull, "--state", str(tmp / "s3"), "--version", "v1")
    assert code == 2 and "signed retirement verified): superseded" in err
    log = server.log.read_text()
    assert '"GET /api/v1/models HTTP/1.1" 400' in log and '"GET /health HTTP/1.1" 200' in log
    assert not any(token in log for token in tokens.values())


def test_schemathesis_finds_no_server_error(deployed: dict) -> None:
    server, tokens, tmp = deployed["server"], deployed["tokens"], deployed["tmp"]
    result = subprocess.run(
        [
            SCHEMATHESIS, "run", f"{server.url}/openapi.json",
            "--header", f"Authorization: Bearer {tokens['coordinator']}",
            # ignored_auth: every request is also sent without a token and with a wrong one,
            # and must then be refused (no unauthorized success)
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,ignored_auth",
            "--max-examples", "10", "--workers", "1", "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "10", "--seed", "1", "--no-color",
            "--tls-verify", deployed["ca"],
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failures:" not in result.stdout and "Tested: 11" in result.stdout
