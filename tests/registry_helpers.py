"""Shared fixtures for the registry tests: run directories, registries, a live server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save_file

from semiofed.privacy.keys import generate_keypair
from semiofed.server.certs import ConsortiumPaths, init_consortium
from semiofed.server.registry.auth import create_token
from semiofed.server.registry.publish import Registry, default_db_url, open_registry
from semiofed.shared.cli import main

SEMIOFED = str(Path(sys.executable).parent / "semiofed")
SITES = ("site-a", "site-b", "site-c")
ARCH_HASH = "3" * 64


def make_run_dir(
    path: Path, rounds: int = 3, seed: int = 0, sites: tuple[str, ...] = SITES
) -> Path:
    """A run directory as the ServerApp writes it: small weights, model config, run record."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "encoder.weight": rng.normal(size=(8, 4)).astype(np.float32),
            "head.bias": np.zeros(6, np.float32),
        },
        str(path / "model.safetensors"),
    )
    (path / "model_config.json").write_text(
        json.dumps(
            {
                "name": "semionet",
                "hidden": 8,
                "streams": ["pose", "face"],
                "architecture_hash": ARCH_HASH,
            }
        )
    )
    run = {  # the keys the ServerApp writes (server/app.py)
        "format": "semiofed-run-1",
        "flower_run_id": 1000 + seed,
        "run_name": f"run-{seed}",
        "started_unix": 1735725600.0,
        "finished_unix": 1735725900.0,
        "data": "synthetic",
        "config": {
            "federation": {"rounds": rounds, "strategy": "fedavg"},
            "training": {"local-epochs": 1, "noise-multiplier": 1.1, "max-grad-norm": 1.0},
        },
        "patient_level_dp": {"privacy_unit": "patient", "delta": 1e-5, "accountant": "rdp"},
        "rounds": [
            {
                "round": r,
                "federated_eval": {"loss": 1.0 / r + seed, "macro-f1": 0.2 * r},
                "sites": {
                    s: {"epsilon": 0.5 * r * (i + 1), "delta": 1e-5, "privacy-unit": "patient"}
                    for i, s in enumerate(sites)
                },
            }
            for r in range(1, rounds + 1)
        ],
    }
    (path / "run.json").write_text(json.dumps(run))
    return path


@dataclass
class RegistrySetup:
    data: Path
    registry: Registry
    private_key: Path
    public_key: Path
    tokens: dict[str, str]


def make_registry(data: Path, db_url: str | None = None) -> RegistrySetup:
    """A registry with a coordinator key pair and one token per role (its database at
    ``db_url``, by default SQLite in ``data``)."""
    keys = data / "keys"
    keys.mkdir(parents=True)
    generate_keypair(keys / "coordinator.pem", keys / "coordinator.pub.pem")
    registry = open_registry(db_url or default_db_url(data), data, keys / "coordinator.pub.pem")
    tokens = {}
    with registry.sessions() as session:
        for role in ("coordinator", "site", "auditor"):
            tokens[role] = create_token(session, role, f"test {role}")[1]
    return RegistrySetup(
        data, registry, keys / "coordinator.pem", keys / "coordinator.pub.pem", tokens
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(folder: Path) -> ConsortiumPaths:
    """A CA and a server certificate for 127.0.0.1/localhost (the SuperLink's, from
    ``server init``'s own code), for a registry served over TLS."""
    return init_consortium(folder, hosts=["127.0.0.1", "localhost"])


class LiveServer:
    """``semiofed registry serve`` in a subprocess on 127.0.0.1 (HTTPS with ``tls``'s
    certificate, else plain HTTP on loopback); stopped by its PID."""

    def __init__(
        self,
        data: Path,
        log: Path,
        tls: ConsortiumPaths | None = None,
        extra: tuple[str, ...] = (),
        log_level: str = "warning",
    ) -> None:
        self.data, self.log, self.tls, self.log_level = data, log, tls, log_level
        self.extra = extra
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(tls.ca_cert)) if tls else True
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, **kwargs: object) -> httpx.Client:
        """A client on this server that verifies its certificate against the test CA."""
        return httpx.Client(base_url=self.url, verify=self.verify, timeout=30, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 60.0) -> None:
        tls = (
            ("--certfile", str(self.tls.superlink_cert), "--keyfile", str(self.tls.superlink_key))
            if self.tls
            else ()
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    SEMIOFED,
                    "registry",
                    "serve",
                    "--data",
                    str(self.data),
                    "--port",
                    str(self.port),
                    "--log-level",
                    self.log_level,
                    *tls,
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"registry exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                if (
                    httpx.get(f"{self.url}/health", timeout=1, verify=self.verify).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"registry did not become healthy in {timeout}s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None


def run_main(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``semiofed ARGS`` in this process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()
