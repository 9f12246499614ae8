"""The Flower command lines of a SemioFed consortium, in one place.

Used by the local consortium (:class:`semiofed.server.consortium.Consortium`), by
``semiofed server superlink`` and ``semiofed site supernode`` (multi-host deployment), and
mirrored by ``docker-compose.yml``. Pure functions: they build argument lists, they start
nothing (except :func:`exec_command`, which replaces the current process).

Secure by default: without ``insecure=True`` the SuperLink runs with TLS and SuperNode
authentication, and a SuperNode verifies the SuperLink with the consortium CA and
authenticates with its private key. Runtime dependency installation is always disabled: the
apps run with the packages installed next to Flower, never with ones fetched for a run.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import SemioFedError

NODE_CONFIG_KEYS = ("site-name", "data-dir", "state-dir")


def flower_bin(name: str) -> str:
    """A Flower executable next to this interpreter (the project's venv), else ``name`` (PATH)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def flower_env(flwr_home: Path | str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: this interpreter's folder first on PATH (Flower
    starts its helpers, e.g. ``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``, by
    name), ``FLWR_HOME``, Flower telemetry off, unbuffered output."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def superlink_command(
    *,
    host: str,
    port: int,
    database: Path | str,
    ca_cert: Path | str | None = None,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    insecure: bool = False,
) -> list[str]:
    """``flower-superlink`` with TLS (``ca_cert``, ``certfile``, ``keyfile``) and SuperNode
    authentication, or ``--insecure`` (debugging only)."""
    cmd = [flower_bin("flower-superlink")]
    if insecure:
        cmd.append("--insecure")
    else:
        if ca_cert is None or certfile is None or keyfile is None:
            raise ValueError("a secure SuperLink needs ca_cert, certfile and keyfile")
        cmd += [
            "--ssl-ca-certfile",
            str(ca_cert),
            "--ssl-certfile",
            str(certfile),
            "--ssl-keyfile",
            str(keyfile),
            "--enable-supernode-auth",
        ]
    cmd += [
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database),
    ]
    return cmd


def node_config(site_name: str, data_dir: Path | str, state_dir: Path | str) -> str:
    """The ``--node-config`` value the SemioFed ClientApp reads (``site-name``, ``data-dir``,
    ``state-dir``)."""
    values = dict(zip(NODE_CONFIG_KEYS, (site_name, str(data_dir), str(state_dir)), strict=True))
    for key, value in values.items():
        if '"' in value:
            # Flower's key="value" parser cannot escape a double quote
            raise SemioFedError(f"{key} {value!r}: must not contain a double quote")
    return " ".join(f'{key}="{value}"' for key, value in values.items())


def supernode_command(
    *,
    superlink: str,
    port: int,
    site_name: str,
    data_dir: Path | str,
    state_dir: Path | str,
    ca_cert: Path | str | None = None,
    auth_key: Path | str | None = None,
    trusted_entities: Path | str | None = None,
    insecure: bool = False,
) -> list[str]:
    """``flower-supernode`` connecting to ``superlink`` (HOST:PORT), verifying it with
    ``ca_cert``, authenticating with ``auth_key`` and running only FABs signed by a key in
    ``trusted_entities`` (YAML, written by the officer's approval), or ``--insecure``
    (debugging only: no TLS, no authentication, and no FAB check unless
    ``trusted_entities`` is given). ``port`` is the SuperNode's local ClientApp API (not
    reachable from outside)."""
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink]
    if insecure:
        cmd.append("--insecure")
    else:
        if ca_cert is None or auth_key is None or trusted_entities is None:
            raise ValueError("a secure SuperNode needs ca_cert, auth_key and trusted_entities")
        cmd += [
            "--root-certificates",
            str(ca_cert),
            "--auth-supernode-private-key",
            str(auth_key),
        ]
    if trusted_entities is not None:
        cmd += ["--trusted-entities", str(trusted_entities)]
    cmd += ["--port", str(port), "--node-config", node_config(site_name, data_dir, state_dir)]
    return cmd


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` → ``(host, port)``; a clear error otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SemioFedError(f"{address!r}: expected HOST:PORT, e.g. superlink.example.org:8000")
    return host, int(port)


def exec_command(cmd: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process by ``cmd`` (signals and the exit code then belong to Flower, which
    is what a container's main process or a service manager expects)."""
    print(f"semiofed: exec {shlex.join(cmd)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        os.execvpe(cmd[0], list(cmd), dict(env))
    except OSError as exc:
        raise SemioFedError(f"cannot start {cmd[0]}: {exc}") from None


def start_flower(
    cmd: Sequence[str], env: Mapping[str, str], *, insecure: bool, dry_run: bool
) -> int:
    """What ``semiofed server superlink`` / ``site supernode`` do with their command line:
    print it (``dry_run``), or warn when insecure, create ``FLWR_HOME`` and exec it."""
    if dry_run:
        print(shlex.join(cmd))
        return 0
    if insecure:
        print(
            "semiofed: WARNING: --insecure: no TLS, no SuperNode authentication (debugging only)",
            file=sys.stderr,
        )
    Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    exec_command(cmd, env)
    return 0  # not reached: exec_command replaces this process
