"""The registry as deployed: a real uvicorn (`semiofed registry serve`), the CLI against it,
a restart on the same SQLite file, and schemathesis fuzzing of the OpenAPI description."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from semiofed.client.model_pull import VerificationError, current_model, pull
from semiofed.privacy.keys import generate_keypair
from tests.registry_helpers import LiveServer, make_run_dir, run_main

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
    server = LiveServer(tmp / "data", tmp / "server.log")
    server.start()
    try:
        yield {"tmp": tmp, "data": data, "tokens": tokens, "server": server}
    finally:
        server.stop()


def test_publish_pull_restart(deployed: dict) -> None:
    tmp, data, tokens, server = (
        deployed["tmp"],
        deployed["data"],
        deployed["tokens"],
        deployed["server"],
    )
    run = str(make_run_dir(tmp / "run"))
    code, _, err = run_main(
        "registry", "publish", run, "--url", server.url, "--token", tokens["site"], "--data", data
    )
    assert code == 2 and "HTTP 403" in err
    code, out, err = run_main(
        "registry", "publish", run, "--url", server.url, "--data", data,
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
    )
    code, out, err = run_main(*site_pull, "--state", str(state))
    assert code == 0, err
    assert "installed v1" in out and "signature verified" in out
    assert "site-c: ε=4.5 δ=1e-05 (patient, rdp)" in out
    assert current_model(state) == (state / "models" / "v1").resolve()

    generate_keypair(tmp / "wrong.pem", tmp / "wrong.pub.pem")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with pytest.raises(VerificationError, match="refusing to install"):
            pull(client, tokens["site"], tmp / "wrong.pub.pem", tmp / "s2")
        assert current_model(tmp / "s2") is None
        site = {"Authorization": f"Bearer {tokens['site']}"}
        weights_before = client.get("/api/v1/models/v1/weights", headers=site).content

        server.stop()
        server.start()  # same SQLite file, same data folder
        listing = client.get(
            "/api/v1/models", headers={"Authorization": f"Bearer {tokens['auditor']}"}
        )
        assert listing.status_code == 200 and [
            v["version"] for v in listing.json()["versions"]
        ] == ["v1"]
        assert client.get("/api/v1/models/v1/weights", headers=site).content == weights_before
    code, out, _ = run_main(*site_pull, "--state", str(state))
    assert code == 0 and "already installed v1" in out

    code, _, err = run_main(
        "registry",
        "retire",
        "v1",
        "--reason",
        "superseded",
        "--url",
        server.url,
        "--token",
        tokens["coordinator"],
    )
    assert code == 0, err
    card = httpx.get(
        f"{server.url}/api/v1/models/v1", headers={"Authorization": f"Bearer {tokens['auditor']}"}
    )
    assert card.json()["status"] == "retired" and card.json()["retired_reason"] == "superseded"
    code, _, err = run_main(*site_pull, "--state", str(tmp / "s3"))
    assert code == 2 and "no active model version" in err


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
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failures:" not in result.stdout and "Tested: 11" in result.stdout
