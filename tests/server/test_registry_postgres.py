"""The registry's database path on a real PostgreSQL server as well as on SQLite.

The PostgreSQL server is started by this module (``initdb`` + ``postgres`` from
``/usr/local/bin``, or wherever ``$SEMIOFED_PG_BIN`` says) in a temporary folder, on 127.0.0.1
and a free port, and stopped by its PID at the end; as root it runs as ``nobody`` (PostgreSQL
refuses to run as root). Without the binaries the PostgreSQL cases are skipped, saying why.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text

from semiofed.client.model_pull import current_model, pull
from semiofed.server.registry.app import create_app
from semiofed.server.registry.db import SCHEMA_VERSION, ModelVersion, make_engine, migrate
from semiofed.server.registry.publish import (
    check_stored,
    open_registry,
    publish_local,
    retire_local,
)
from tests.registry_helpers import free_port, make_registry, make_run_dir

PG_BIN = Path(os.environ.get("SEMIOFED_PG_BIN", "/usr/local/bin"))
PG_USER = "semiofed"
_DATABASES = itertools.count()


def _demote() -> tuple[Callable[[], None] | None, int | None]:
    """A pre-exec function that drops root to ``nobody`` (and its uid), or (None, None)."""
    if os.geteuid() != 0:
        return None, None
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return drop, nobody.pw_uid


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The libpq conninfo of a PostgreSQL server of this module's own."""
    missing = [n for n in ("initdb", "postgres") if not (PG_BIN / n).is_file()]
    if missing:
        pytest.skip(f"PostgreSQL binaries {missing} not in {PG_BIN} (set $SEMIOFED_PG_BIN)")
    drop, uid = _demote()
    root = Path(tempfile.mkdtemp(prefix="semiofed-pg-"))
    if uid is not None:
        os.chown(root, uid, -1)
    data, log = root / "data", root / "postgres.log"
    proc = None
    try:
        subprocess.run(
            [PG_BIN / "initdb", "-D", data, "-U", PG_USER, "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            preexec_fn=drop, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [PG_BIN / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port),
                 "-k", root, "-c", "fsync=off", "-c", "full_page_writes=off"],
                preexec_fn=drop, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        conninfo = f"host=127.0.0.1 port={port} user={PG_USER} dbname=postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(conninfo, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {log.read_text()}") from None
                time.sleep(0.2)
        yield conninfo
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    conninfo = request.getfixturevalue("postgres")
    name = f"registry_{next(_DATABASES)}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    port = conninfo.split("port=")[1].split()[0]
    return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/{name}"


def test_publish_pull_retire_and_restart(db_url: str, tmp_path: Path) -> None:
    setup = make_registry(tmp_path / "data", db_url)
    for seed in (1, 2):
        publish_local(make_run_dir(tmp_path / f"run{seed}", seed=seed), setup.registry,
                      setup.private_key)  # fmt: skip
    tc = TestClient(create_app(setup.registry))
    site = {"Authorization": f"Bearer {setup.tokens['site']}"}
    listing = tc.get("/api/v1/models", headers=site).json()["versions"]
    assert [(v["version"], v["sequence"]) for v in listing] == [("v2", 2), ("v1", 1)]
    state = tmp_path / "state"
    assert pull(tc, setup.tokens["site"], setup.public_key, state).version == "v2"
    retire_local(setup.registry, "v2", "recalled", setup.private_key)
    assert tc.get("/api/v1/models/v2/weights", headers=site).status_code == 410
    assert pull(tc, setup.tokens["site"], setup.public_key, state, "v1").version == "v1"
    assert current_model(state) == (state / "models" / "v1").resolve()
    # a restarted registry reads what the first one stored, and its start-up check passes
    again = open_registry(db_url, setup.data, setup.public_key)
    check_stored(again)
    with again.sessions() as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.sequence)).all()
        assert [(r.version, r.status, r.retired_reason) for r in rows] == [
            ("v1", "active", None),
            ("v2", "retired", "recalled"),
        ]


def test_migrations_run_forward_once(db_url: str) -> None:
    engine = make_engine(db_url)
    assert migrate(engine, target=2) == 2
    with engine.begin() as conn:  # the table as a registry of schema 2 made it
        for column in ("retirement_json", "retirement_signature"):
            conn.execute(text(f"ALTER TABLE model_versions DROP COLUMN {column}"))
    assert migrate(engine) == SCHEMA_VERSION == migrate(engine)  # ALTER TABLE once, then nothing
    columns = {c["name"] for c in inspect(engine).get_columns("model_versions")}
    assert {"retirement_json", "retirement_signature"} <= columns
    engine.dispose()
