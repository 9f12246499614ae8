"""Run a consortium on this machine: one SuperLink, one SuperNode per site, run submission.

Every process is started in its own session (process group) and recorded; :meth:`Consortium.close`
ends every group it started (SIGTERM, then SIGKILL after a grace period), also when the caller
is interrupted (use it as a context manager). The coordinator never imports site code: the
SuperNodes load the ClientApp by module reference (``semiofed.client.app:app``).

The exact commands (built by :mod:`semiofed.shared.flower_commands`, which
``semiofed server superlink`` / ``semiofed site supernode`` and ``docker-compose.yml`` use too)::

    flower-superlink --ssl-ca-certfile CERTS/ca.crt --ssl-certfile CERTS/superlink.crt
        --ssl-keyfile CERTS/superlink.key --enable-supernode-auth
        --disable-runtime-dependency-installation --host 127.0.0.1 --port PORT
        --database STATE/superlink.db
    flwr supernode register CERTS/supernodes/SITE.pub local      (FLWR_HOME with config.toml)
    flower-supernode --superlink HOST:PORT --root-certificates CERTS/ca.crt
        --auth-supernode-private-key SITEKEYS/SITE.key --trusted-entities STATE/trusted_entities.yaml
        --port SITEPORT --node-config 'site-name="SITE" data-dir="…" state-dir="…"'
    flwr run @semiofed/semiofed-federation==0.1.0 local --run-config 'semiofed="…"' --format json

Each site's key pair is made at the site (``semiofed site keygen``); the coordinator holds only
the public keys. The FAB is signed with ``CERTS/fab-signing.key`` and served to the SuperLink
by :class:`~semiofed.server.code_signing.AppIndex` while a run is submitted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiofed.privacy.approval import TRUSTED_ENTITIES_FILE, trusted_signers_file
from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import APP_SPEC, build_fab, write_app_dir
from semiofed.shared.flower_commands import (
    flower_bin,
    flower_env,
    superlink_command,
    supernode_command,
)

from .certs import ConsortiumPaths
from .code_signing import INDEX_URL_ENV, AppIndex, index_url, load_signing_key, sign_fab

log = logging.getLogger(__name__)

# A SuperExec checks for new tasks every second by default: a SuperNode's for the ClientApp
# process of each message, the SuperLink's for the one ServerApp of a run. Each check is an
# RPC that costs CPU: idle, a SuperNode's tree burns 4.5 % of a core at 0.1 s, 2.1 % at
# 0.25 s, 0.7 % at 1 s, and the SuperLink's 9.3 % at 0.1 s, 1.5 % at 1 s (measured). So the
# sites check every 0.25 s (a message waits 0.125 s on average) and the SuperLink every 1 s
# (once per run).
SUPEREXEC_POLL_SECONDS = "0.25"
SERVERAPP_EXEC_POLL_SECONDS = "1.0"
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
STARTUP_TIMEOUT = 60.0
# Flower marks a silent SuperNode offline after HEARTBEAT_PATIENCE (2) × its 30 s heartbeat.
OFFLINE_TIMEOUT = 90.0
# Every `flwr` CLI call is a fresh Python process (~1.5 s of CPU): CPU the sites' ClientApps
# need on a small machine. Waits therefore ask the SuperLink sparingly.
CLI_POLL_SECONDS = 2.0
# … and on a heavily loaded machine one such process can take over a minute of wall time.
CLI_TIMEOUT = 300.0
RUN_STATUS_EVERY_S = 30.0  # while a run's progress file says it is not finished
PROGRESS_POLL_SECONDS = 0.5


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SemioFedError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise SemioFedError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` right now (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class Site:
    """One hospital of the local consortium."""

    name: str
    data_dir: Path
    state_dir: Path
    key_path: Path | None = None  # the site's own SuperNode private key (site keygen)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


class Consortium:
    """A SuperLink and its SuperNodes on 127.0.0.1, owned by this object."""

    def __init__(
        self,
        workdir: Path,
        certs: ConsortiumPaths | None,
        port: int | None = None,
        verbose: bool = False,
        superlink: str | None = None,
        index_port: int | None = None,
    ) -> None:
        """``certs=None`` means insecure transport (only for ``--insecure`` debugging).
        ``superlink="HOST:PORT"`` talks to a SuperLink running elsewhere (only its CA
        certificate is needed) instead of one this object starts on 127.0.0.1.
        ``index_port`` is where the signed FAB is served to the SuperLink (127.0.0.1)."""
        self.workdir = Path(workdir)
        self.certs = certs
        self.port = port or free_port()
        self.address = superlink or f"127.0.0.1:{self.port}"
        self.verbose = verbose
        self.index_port = index_port or free_port()
        self.sites: dict[str, Site] = {}
        self.node_ids: dict[str, int] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self.superlink: subprocess.Popen[bytes] | None = None
        self.flwr_home = self.workdir / "flwr-cli"
        self.logs = self.workdir / "logs"
        if certs is not None:
            certs.require(superlink=superlink is None)
        if superlink is not None:
            self._write_cli_config()

    # -- process management -----------------------------------------------------------------
    def _env(self, flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = flower_env(flwr_home)  # PATH, FLWR_HOME, telemetry off, unbuffered
        env[SUPEREXEC_POLL_ENV] = SUPEREXEC_POLL_SECONDS
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(extra or {})
        return env

    def _spawn(
        self, name: str, cmd: list[str], flwr_home: Path, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        flwr_home.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as out:
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(flwr_home, extra_env),
                start_new_session=True,
            )
        self._procs.append(proc)
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return proc

    @staticmethod
    def _end(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """End a process we started, its process group and every process below it (Flower
        starts some helpers, e.g. the SuperLink's SuperExec and its ServerApp, in sessions of
        their own)."""
        tree = _descendants(proc.pid)
        Consortium._end_group(proc, grace)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _end_group(proc: subprocess.Popen[bytes], grace: float) -> None:
        if proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # reap orphans left in its group
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)

    def close(self) -> None:
        """End every process this consortium started (SuperNodes first)."""
        for proc in reversed(self._procs):
            self._end(proc)
        self._procs.clear()

    def __enter__(self) -> Consortium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SuperLink --------------------------------------------------------------------------
    def forget_superlink_state(self) -> None:
        """Delete an earlier SuperLink's database (runs, registered SuperNode keys), so that a
        new consortium on this work folder registers its sites again instead of failing on
        keys an earlier one registered ("Public key already in use")."""
        for path in self.workdir.glob("superlink.db*"):
            path.unlink()

    def superlink_command(self) -> list[str]:
        """The SuperLink's command line (TLS and SuperNode authentication unless insecure)."""
        certs = self.certs
        return superlink_command(
            host="127.0.0.1",
            port=self.port,
            database=self.workdir / "superlink.db",
            ca_cert=certs.ca_cert if certs else None,
            certfile=certs.superlink_cert if certs else None,
            keyfile=certs.superlink_key if certs else None,
            insecure=certs is None,
        )

    def start_superlink(self) -> None:
        """Start the SuperLink (TLS and SuperNode authentication unless insecure)."""
        cmd = self.superlink_command()
        self.superlink = self._spawn(
            "superlink",
            cmd,
            self.workdir / "superlink-home",
            {
                INDEX_URL_ENV: index_url(self.index_port),
                SUPEREXEC_POLL_ENV: SERVERAPP_EXEC_POLL_SECONDS,
            },
        )
        _wait_port("127.0.0.1", self.port, STARTUP_TIMEOUT, self.superlink)
        self._write_cli_config()

    def restart_superlink(self) -> None:
        """End the SuperLink (and the ServerApp it runs) and start it again on the same
        port and database: what a coordinator restart looks like to the sites."""
        if self.superlink is not None:
            self._end(self.superlink)
            self._procs.remove(self.superlink)
        self.start_superlink()

    def _write_cli_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", 'default = "local"', "", "[superlink.local]"]
        lines.append(f'address = "{self.address}"')
        if self.certs is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.certs.ca_cert.resolve()}"')
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def flwr(self, *args: str, timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
        """Run a ``flwr`` CLI command against this SuperLink; returns its JSON output."""
        cmd = [flower_bin("flwr"), *args, "--format", "json"]
        try:
            res = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self._env(self.flwr_home),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SemioFedError(
                f"`flwr {' '.join(args)}` did not answer in {timeout:.0f} s"
            ) from None
        text = res.stdout.strip()
        start = text.find("{")
        try:
            data = json.loads(text[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            data = {}
        if res.returncode != 0 or not data.get("success", False):
            detail = data.get("error-message") or res.stderr.strip() or text
            raise SemioFedError(f"`flwr {' '.join(args)}` failed: {detail}")
        return data

    # -- SuperNodes -------------------------------------------------------------------------
    def register(self, site: str) -> int:
        """Register a site's public key with the SuperLink (``flwr supernode register``)."""
        if self.certs is None:
            raise SemioFedError("SuperNode keys are only registered when TLS/auth is on")
        pub = self.certs.supernode_pub(site)
        if not pub.is_file():
            raise SemioFedError(f"{pub}: no public key for site {site!r}")
        data = self.flwr("supernode", "register", str(pub.resolve()), "local", "--name", site)
        self.node_ids[site] = int(data["node-id"])
        return self.node_ids[site]

    def add_site(
        self, name: str, data_dir: Path, state_dir: Path, key_path: Path | None = None
    ) -> Site:
        """A site with its data, state and own SuperNode private key (not needed insecure)."""
        site = Site(name, Path(data_dir), Path(state_dir), key_path)
        self.sites[name] = site
        return site

    def start_supernode(self, name: str, key_path: Path | None = None) -> subprocess.Popen[bytes]:
        """Start (or restart) the SuperNode of ``name`` with its key (or ``key_path``); it
        runs only FABs signed by a signer in ``STATE/trusted_entities.yaml`` (the
        officer's approvals; insecure: only when that file exists)."""
        site = self.sites[name]
        if site.proc is not None and site.proc.poll() is None:
            raise SemioFedError(f"the SuperNode of {name} is already running")
        if site.proc is not None and name in self.node_ids:
            self._wait_offline(self.node_ids[name])
        site.port = free_port()
        certs = self.certs
        trusted: Path | None = site.state_dir.resolve() / TRUSTED_ENTITIES_FILE
        if certs is not None:
            if (key_path or site.key_path) is None:
                raise SemioFedError(f"site {name} has no SuperNode key (semiofed site keygen)")
            trusted = trusted_signers_file(trusted)
        elif not trusted.is_file():
            trusted = None
        cmd = supernode_command(
            superlink=self.address,
            port=site.port,
            site_name=name,
            data_dir=site.data_dir.resolve(),
            state_dir=site.state_dir.resolve(),
            ca_cert=certs.ca_cert if certs else None,
            auth_key=(key_path or site.key_path) if certs else None,
            trusted_entities=trusted,
            insecure=certs is None,
        )
        site.state_dir.mkdir(parents=True, exist_ok=True)
        site.proc = self._spawn(
            f"supernode-{name}", cmd, site.state_dir / "flwr-home", site.extra_env
        )
        return site.proc

    def kill_supernode(self, name: str) -> None:
        """SIGKILL a site's SuperNode and its ClientApp processes (a crash, not a goodbye)."""
        proc = self.sites[name].proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def _wait_offline(self, node_id: int, timeout: float = OFFLINE_TIMEOUT) -> None:
        """Wait until the SuperLink no longer lists ``node_id`` online. A SuperNode that died
        stays online until its heartbeat deadline passes, and the SuperLink refuses to
        activate a node that is still online (its restart would exit with code 305)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            nodes = self.flwr("supernode", "list", "local").get("nodes", [])
            online = {
                str(n.get("node-id")) for n in nodes if str(n.get("status", "")).lower() == "online"
            }
            if str(node_id) not in online:
                return
            time.sleep(CLI_POLL_SECONDS)
        raise SemioFedError(f"node {node_id} is still online after {timeout:.0f} s")

    def wait_connected(self, n: int, timeout: float = STARTUP_TIMEOUT) -> list[dict[str, Any]]:
        """Wait until ``n`` SuperNodes are online (``flwr supernode list``)."""
        end = time.monotonic() + timeout
        nodes: list[dict[str, Any]] = []
        while time.monotonic() < end:
            nodes = [
                node
                for node in self.flwr("supernode", "list", "local").get("nodes", [])
                if str(node.get("status", "")).lower() == "online"
            ]
            if len(nodes) >= n:
                return nodes
            time.sleep(CLI_POLL_SECONDS)
        raise SemioFedError(f"only {len(nodes)} of {n} SuperNodes connected after {timeout:.0f} s")

    # -- runs -------------------------------------------------------------------------------
    def submit(
        self,
        run_config: dict[str, str | int | float | bool],
        app_dir: Path | None = None,
        signing_key: Path | None = None,
        signed: bool = True,
    ) -> int:
        """Submit the SemioFed Flower app (or ``app_dir``) with ``run_config``; returns the
        Flower run id. The FAB is signed with ``signing_key`` (default
        ``CERTS/fab-signing.key``) and fetched by the SuperLink from :class:`AppIndex`;
        ``signed=False`` (or insecure without a key) submits it unsigned from its folder."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        key_path = signing_key or (self.certs.fab_signing_key if self.certs else None)
        if not signed or key_path is None:
            folder = app_dir or write_app_dir(self.workdir / "app")
            data = self.flwr("run", str(folder), "local", "--run-config", overrides)
            return int(data["run-id"])
        fab = build_fab(app_dir)
        with AppIndex(self.index_port, fab, [sign_fab(fab, load_signing_key(key_path))]):
            data = self.flwr("run", APP_SPEC, "local", "--run-config", overrides)
        return int(data["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        runs = self.flwr("ls", "local", "--run-id", str(run_id))["runs"]
        return dict(runs[0]) if runs else {}

    def wait_run(
        self,
        run_id: int,
        timeout: float,
        poll: float = CLI_POLL_SECONDS,
        progress: Path | None = None,
    ) -> dict[str, Any]:
        """Wait until the run finished; returns its ``flwr ls`` row.

        Without ``progress`` the SuperLink is asked every ``poll`` seconds. With the run's
        ``progress.json`` (:data:`semiofed.server.app.PROGRESS_FILE` in its out dir) it is
        asked once that file, written since this call, says the ServerApp finished, and
        otherwise every :data:`RUN_STATUS_EVERY_S` seconds to notice a run that failed."""
        start_ns = time.time_ns()
        end = time.monotonic() + timeout
        asked = -math.inf
        while time.monotonic() < end:
            done = progress is not None and _finished_since(progress, start_ns)
            if progress is None or done or time.monotonic() - asked > RUN_STATUS_EVERY_S:
                asked = time.monotonic()
                status = self.run_status(run_id)
                if str(status.get("status", "")).startswith("finished"):
                    return status
                self._check_alive()
            time.sleep(poll if progress is None or done else PROGRESS_POLL_SECONDS)
        raise SemioFedError(f"run {run_id} did not finish within {timeout:.0f} s")

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), "local")

    def _check_alive(self) -> None:
        if self.superlink is not None and self.superlink.poll() is not None:
            raise SemioFedError(
                f"the SuperLink exited with code {self.superlink.returncode}; "
                f"see {self.logs / 'superlink.log'}"
            )


def _finished_since(progress: Path, start_ns: int) -> bool:
    """Whether ``progress`` was written at or after ``start_ns`` and says finished."""
    try:
        if progress.stat().st_mtime_ns < start_ns:
            return False
        return bool(json.loads(progress.read_text(encoding="utf-8")).get("finished"))
    except (OSError, ValueError):
        return False
