"""docker-compose.yml and the Dockerfile describe the consortium the CLI runs (no Docker needed).

Every service's command parses with the real ``semiofed`` parser; sites are isolated (no
volume or host path shared between two sites but the public CA certificate, each SuperNode
mounts only its own site-made key, nobody mounts the CA private key, only the submitter the
FAB-signing key, and it shares the SuperLink's network); ports agree; no service runs as
root; each site's privacy officer has a service whose key volume no SuperNode mounts; the
registry serves TLS; the image installs as the Makefile does. The checker is tested on broken copies of the file so that it can fail.
Also: the Flower command lines and the two thin CLI wrappers that exec them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import posixpath
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from semiofed.client import supernode_cli
from semiofed.client.keygen_cli import write_supernode_keypair
from semiofed.privacy.approval import TRUSTED_ENTITIES_FILE, NotApproved, approve
from semiofed.privacy.keys import generate_keypair
from semiofed.server import superlink_cli
from semiofed.server.certs import ConsortiumPaths, init_consortium
from semiofed.server.consortium import Consortium
from semiofed.server.registry_cli import cmd_serve
from semiofed.shared.cli import build_parser, main
from semiofed.shared.errors import SemioFedError
from semiofed.shared.flower_commands import node_config, superlink_command, supernode_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

TLS_FLAGS = ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth")
NO_RUNTIME_DEPS = "--disable-runtime-dependency-installation"


# -- reading the compose file ----------------------------------------------------------------
def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), path
    return data


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or a normalised host path relative to the compose file
    target: str
    read_only: bool
    named: bool


def _is_host_path(source: str) -> bool:
    return source.startswith(("/", ".", "~"))


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target = str(v.get("source", "")), str(v["target"])
            read_only = bool(v.get("read_only", False))
        named = not _is_host_path(source)
        if not named:
            source = posixpath.normpath(source)
        out.append(Mount(source, posixpath.normpath(target), read_only, named))
    return out


def published(service: dict[str, Any]) -> list[tuple[int, int]]:
    """``(host port, container port)`` for each published port."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((int(p["published"]), int(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            out.append((int(parts[-2]), int(parts[-1])))
    return out


def parse(cmd: Any) -> tuple[argparse.Namespace | None, str]:
    """Parse a service command with the real semiofed parser: ``(args, "")`` or
    ``(None, why)``; never lets argparse exit."""
    if not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
        return None, f"command must be a list of strings, got {cmd!r}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(cmd), ""
    except SystemExit:
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue() else "exit"


def _covers(a: Mount, b: Mount) -> bool:
    """Whether mounts ``a`` and ``b`` expose the same storage (equal, or one path inside the
    other)."""
    if a.named or b.named:
        return a.named and b.named and a.source == b.source
    pa, pb = PurePosixPath(a.source), PurePosixPath(b.source)
    return pa == pb or pa in pb.parents or pb in pa.parents


def _mount_at(ms: list[Mount], target: str) -> Mount | None:
    """The mount providing container path ``target`` (the deepest one)."""
    t = PurePosixPath(posixpath.normpath(target))
    best = None
    for m in ms:
        mt = PurePosixPath(m.target)
        if (mt == t or mt in t.parents) and (best is None or len(m.target) > len(best.target)):
            best = m
    return best


def dockerfile_user(path: Path = DOCKERFILE) -> str:
    """The user the image runs as: its last ``USER`` (root without one)."""
    users = re.findall(r"^USER\s+(\S+)", path.read_text(encoding="utf-8"), re.M)
    return users[-1] if users else "root"


def _is_root(user: str) -> bool:
    return user.split(":")[0] in ("", "0", "root")


def _officer_problems(
    services: dict[str, dict[str, Any]],
    parsed: dict[str, argparse.Namespace],
    nodes: list[str],
    node_mounts: dict[str, list[Mount]],
) -> list[str]:
    """Each SuperNode's state has an officer service (``audit approve``) whose key is on a
    volume of its own: neither the state volume nor anything a SuperNode mounts."""
    found: list[str] = []
    approved: set[str] = set()
    for name, a in parsed.items():
        if services[name]["command"][:2] != ["audit", "approve"]:
            continue
        ms = mounts(services[name])
        key = _mount_at(ms, str(a.key)) if a.key else None
        state = _mount_at(ms, str(a.state))
        if key is None or state is None:
            found.append(f"{name}: --key {a.key} or --state {a.state} is not on a volume")
            continue
        if _covers(key, state):
            found.append(f"{name}: --key {a.key} is on the site's state volume {state.source}")
        for n in nodes:
            if any(_covers(key, m) for m in node_mounts[n]):
                found.append(f"{n}: mounts {key.source}, where {name} keeps the officer key")
            node_state = _mount_at(node_mounts[n], str(parsed[n].state))
            if node_state is not None and _covers(state, node_state):
                approved.add(n)
    found += [
        f"{n}: no officer service approves into its --state" for n in nodes if n not in approved
    ]
    return found


def problems(compose: dict[str, Any], image_user: str | None = None) -> list[str]:
    """Everything wrong with a compose description of the consortium (empty: fine);
    ``image_user``: the image's own user (default: the Dockerfile's)."""
    found: list[str] = []
    services: dict[str, dict[str, Any]] = compose["services"]
    image_user = dockerfile_user() if image_user is None else image_user
    for name, svc in services.items():
        if _is_root(str(svc.get("user") or image_user)):
            found.append(f"{name}: runs as root")
    declared = set((compose.get("volumes") or {}).keys())
    parsed: dict[str, argparse.Namespace] = {}
    for name, svc in services.items():
        args, why = parse(svc.get("command"))
        if args is None:
            found.append(f"{name}: command does not parse with semiofed's CLI: {why}")
            continue
        parsed[name] = args
        for m in mounts(svc):
            if m.named and m.source not in declared:
                found.append(f"{name}: named volume {m.source!r} is not declared under volumes:")
            if not m.named and PurePosixPath(m.source).name == "ca.key":
                found.append(f"{name}: mounts the CA private key {m.source}")

    def role(func: Any) -> list[str]:
        return [n for n, a in parsed.items() if a.func is func]

    superlinks = role(superlink_cli.cmd_superlink)
    nodes = role(supernode_cli.cmd_supernode)
    registries = role(cmd_serve)
    submitters = [n for n, a in parsed.items() if getattr(a, "server_command", None) == "run"]
    for what, names in (("superlink", superlinks), ("registry serve", registries)):
        if len(names) != 1:
            found.append(f"expected exactly one {what} service, found {names}")
    if len(submitters) != 1:
        found.append(f"expected exactly one `server run` service, found {submitters}")
    if len(nodes) < 2:
        found.append(f"expected one SuperNode per site (at least 2), found {nodes}")
    if found:
        return found

    # -- ports ---------------------------------------------------------------------------------
    sl_name = superlinks[0]
    sl = parsed[sl_name]
    if sl.insecure:
        found.append(f"{sl_name}: runs --insecure")
    if sl.port not in [c for _, c in published(services[sl_name])]:
        found.append(f"{sl_name}: --port {sl.port} is not a published container port")
    expected = f"{sl_name}:{sl.port}"
    for name in submitters:  # it serves the signed FAB to the SuperLink on 127.0.0.1
        if services[name].get("network_mode") != f"service:{sl_name}":
            found.append(f"{name}: does not share the network of {sl_name}")
        if parsed[name].superlink != f"127.0.0.1:{sl.port}":
            found.append(f"{name}: --superlink {parsed[name].superlink} is not 127.0.0.1:{sl.port}")
    for name, svc in services.items():
        for m in mounts(svc):
            if not m.named and PurePosixPath(m.source).name == "fab-signing.key":
                if name not in submitters:
                    found.append(f"{name}: mounts the FAB-signing key {m.source}")
                elif not m.read_only:
                    found.append(f"{name}: the FAB-signing key is mounted read-write")
    for name in nodes:
        if parsed[name].superlink != expected:
            found.append(
                f"{name}: --superlink {parsed[name].superlink} but the SuperLink is {expected}"
            )
        if parsed[name].insecure:
            found.append(f"{name}: runs --insecure")
    reg = parsed[registries[0]]
    if reg.port not in [c for _, c in published(services[registries[0]])]:
        found.append(f"{registries[0]}: --port {reg.port} is not a published container port")
    reg_mounts = mounts(services[registries[0]])
    if reg.insecure_http or not all(
        path and _mount_at(reg_mounts, path) for path in (reg.certfile, reg.keyfile)
    ):
        found.append(f"{registries[0]}: serves plain HTTP (needs --certfile/--keyfile mounted)")
    sl_mounts = mounts(services[sl_name])
    if sl.certs is None or _mount_at(sl_mounts, f"{sl.certs}/ca.crt") is None:
        found.append(f"{sl_name}: the consortium certificates are not mounted at --certs")
    ca_sources = {m.source for m in sl_mounts if PurePosixPath(m.source).name == "ca.crt"}
    for ca_key in {posixpath.join(posixpath.dirname(src), "ca.key") for src in ca_sources}:
        for name, svc in services.items():
            if any(_covers(m, Mount(ca_key, "", True, False)) for m in mounts(svc)):
                found.append(f"{name}: a mount exposes the CA private key {ca_key}")

    # -- sites ---------------------------------------------------------------------------------
    site_of = {n: parsed[n].name for n in nodes}
    if len(set(site_of.values())) != len(nodes):
        found.append(f"two SuperNodes share a site name: {site_of}")
    node_mounts = {n: mounts(services[n]) for n in nodes}
    key_mounts: dict[str, Mount] = {}
    for n in nodes:
        a, ms = parsed[n], node_mounts[n]
        for flag, target in (
            ("--data", a.data),
            ("--state", a.state),
            ("--ca", a.ca),
            ("--key", a.key),
        ):
            if target is None or _mount_at(ms, str(target)) is None:
                found.append(f"{n}: {flag} {target} is not on a volume of this service")
        key = _mount_at(ms, str(a.key)) if a.key else None
        if key is not None:
            key_mounts[n] = key
            if key.named or PurePosixPath(key.source).name != f"{a.name}.key":
                found.append(f"{n}: --key comes from {key.source}, not the site's own {a.name}.key")
            if not key.read_only:
                found.append(f"{n}: its key is mounted read-write")
        ca = _mount_at(ms, str(a.ca)) if a.ca else None
        if ca is not None and (ca.source not in ca_sources or not ca.read_only):
            found.append(f"{n}: --ca is not the SuperLink's ca.crt mounted read-only")
        data = _mount_at(ms, str(a.data))
        if data is not None and not data.read_only:
            found.append(f"{n}: its data is mounted read-write")
    for n in nodes:
        for m in node_mounts[n]:
            # the only key material a site sees is its own key
            for other, key in key_mounts.items():
                if other != n and _covers(m, key):
                    found.append(f"{n}: mount {m.source} exposes the key of {site_of[other]}")
            if (
                not m.named
                and m != key_mounts.get(n)
                and any(
                    p.name == "supernodes"
                    for p in (PurePosixPath(m.source), *PurePosixPath(m.source).parents)
                )
            ):
                found.append(f"{n}: mounts {m.source} from the SuperNode key folder")
    found += _officer_problems(services, parsed, nodes, node_mounts)
    for i, n in enumerate(nodes):
        for other in nodes[i + 1 :]:
            for m in node_mounts[n]:
                for o in node_mounts[other]:
                    if _covers(m, o) and not (m.source in ca_sources and m.source == o.source):
                        found.append(f"{n} and {other} share storage: {m.source} / {o.source}")
    return found


# -- the real files ----------------------------------------------------------------------------
def test_compose_describes_an_isolated_consistent_consortium() -> None:
    assert problems(load_compose()) == []


def test_compose_has_three_sites_and_every_service_parses() -> None:
    compose = load_compose()
    sites = sorted(
        parse(s["command"])[0].name  # type: ignore[union-attr]
        for s in compose["services"].values()
        if s["command"][:2] == ["site", "supernode"]
    )
    assert sites == ["site-01", "site-02", "site-03"]
    for name, svc in compose["services"].items():
        args, why = parse(svc["command"])
        assert args is not None, f"{name}: {why}"
        assert callable(args.func), name


# -- the checker fails on broken descriptions ----------------------------------------------------
def _service(compose: dict[str, Any], site: str) -> dict[str, Any]:
    return compose["services"][f"supernode-{site}"]


def _set_arg(cmd: list[str], flag: str, value: str) -> None:
    cmd[cmd.index(flag) + 1] = value


def _share_data(c: dict[str, Any]) -> None:
    vols = _service(c, "site-02")["volumes"]
    vols[vols.index("./data/site-02:/data:ro")] = "./data/site-01:/data:ro"


def _share_state(c: dict[str, Any]) -> None:
    vols = _service(c, "site-02")["volumes"]
    vols[vols.index("site-02-state:/state")] = "site-01-state:/state"


def _parent_data(c: dict[str, Any]) -> None:
    vols = _service(c, "site-03")["volumes"]
    vols[vols.index("./data/site-03:/data:ro")] = "./data:/data:ro"


def _key_folder(c: dict[str, Any]) -> None:
    svc = _service(c, "site-02")
    svc["volumes"] = [v for v in svc["volumes"] if "site-02.key" not in v]
    svc["volumes"].append("./sites:/keys:ro")
    _set_arg(svc["command"], "--key", "/keys/site-02/site-02.key")


def _signing_key_to_site(c: dict[str, Any]) -> None:
    _service(c, "site-01")["volumes"].append("./certs/fab-signing.key:/k/fab-signing.key:ro")


def _submitter_own_network(c: dict[str, Any]) -> None:
    del c["services"]["serverapp"]["network_mode"]


def _other_key(c: dict[str, Any]) -> None:
    svc = _service(c, "site-02")
    svc["volumes"] = [v.replace("site-02.key:/", "site-01.key:/") for v in svc["volumes"]]


def _whole_certs(c: dict[str, Any]) -> None:
    _service(c, "site-01")["volumes"].append("./certs:/all-certs:ro")


def _ca_key_to_superlink(c: dict[str, Any]) -> None:
    c["services"]["superlink"]["volumes"].append("./certs:/all-certs:ro")


def _wrong_port(c: dict[str, Any]) -> None:
    _set_arg(c["services"]["superlink"]["command"], "--port", "9000")


def _wrong_superlink(c: dict[str, Any]) -> None:
    _set_arg(_service(c, "site-03")["command"], "--superlink", "superlink:8001")


def _registry_port(c: dict[str, Any]) -> None:
    c["services"]["registry"]["ports"] = ["8700:8800"]


def _unknown_flag(c: dict[str, Any]) -> None:
    c["services"]["serverapp"]["command"].append("--no-such-flag")


def _insecure_node(c: dict[str, Any]) -> None:
    _service(c, "site-01")["command"].append("--insecure")


def _unmounted_state(c: dict[str, Any]) -> None:
    svc = _service(c, "site-01")
    svc["volumes"] = [v for v in svc["volumes"] if not v.endswith(":/state")]


def _writable_key(c: dict[str, Any]) -> None:
    svc = _service(c, "site-01")
    svc["volumes"] = [v.removesuffix(":ro") if ".key" in v else v for v in svc["volumes"]]


def _undeclared_volume(c: dict[str, Any]) -> None:
    del c["volumes"]["site-02-state"]


def _int_port(c: dict[str, Any]) -> None:
    _set_arg(c["services"]["registry"]["command"], "--port", 8700)  # type: ignore[arg-type]


def _root_superlink(c: dict[str, Any]) -> None:
    c["services"]["superlink"]["user"] = "0:0"


def _root_image(c: dict[str, Any]) -> None:
    for svc in c["services"].values():
        svc.pop("user", None)
    c["image_user"] = "root"  # as if the Dockerfile had no USER


def _officer_key_in_node(c: dict[str, Any]) -> None:
    _service(c, "site-01")["volumes"].append("officer-site-01:/officer:ro")


def _officer_key_in_state(c: dict[str, Any]) -> None:
    _set_arg(c["services"]["officer-site-02"]["command"], "--key", "/state/keys/officer.pem")


def _no_officer(c: dict[str, Any]) -> None:
    del c["services"]["officer-site-03"]


def _plain_registry(c: dict[str, Any]) -> None:
    cmd = c["services"]["registry"]["command"]
    del cmd[cmd.index("--certfile") : cmd.index("--certfile") + 2]


BREAKAGES = [  # (breakage, what the checker must say)
    (_share_data, "share storage: data/site-01 / data/site-01"),
    (_share_state, "share storage: site-01-state / site-01-state"),
    (_parent_data, "share storage: data/site-01 / data"),
    (_key_folder, "supernode-site-02: mount sites exposes the key of site-01"),
    (_signing_key_to_site, "supernode-site-01: mounts the FAB-signing key"),
    (_submitter_own_network, "serverapp: does not share the network of superlink"),
    (_other_key, "not the site's own site-02.key"),
    (_whole_certs, "supernode-site-01: a mount exposes the CA private key"),
    (_ca_key_to_superlink, "superlink: a mount exposes the CA private key"),
    (_wrong_port, "superlink: --port 9000 is not a published container port"),
    (_wrong_superlink, "supernode-site-03: --superlink superlink:8001 but the SuperLink is"),
    (_registry_port, "registry: --port 8700 is not a published container port"),
    (_unknown_flag, "unrecognized arguments: --no-such-flag"),
    (_insecure_node, "supernode-site-01: runs --insecure"),
    (_unmounted_state, "--state /state is not on a volume"),
    (_writable_key, "its key is mounted read-write"),
    (_undeclared_volume, "'site-02-state' is not declared"),
    (_int_port, "must be a list of strings"),
    (_root_superlink, "superlink: runs as root"),
    (_root_image, "supernode-site-02: runs as root"),
    (
        _officer_key_in_node,
        "supernode-site-01: mounts officer-site-01, where officer-site-01 keeps",
    ),
    (
        _officer_key_in_state,
        "officer-site-02: --key /state/keys/officer.pem is on the site's state",
    ),
    (_no_officer, "supernode-site-03: no officer service approves into its --state"),
    (_plain_registry, "registry: serves plain HTTP"),
]


@pytest.mark.parametrize(
    ("breakage", "expected"), BREAKAGES, ids=[b.__name__.strip("_") for b, _ in BREAKAGES]
)
def test_checker_catches(breakage: Any, expected: str) -> None:
    compose = copy.deepcopy(load_compose())
    breakage(compose)
    found = problems(compose, compose.pop("image_user", None))
    assert any(expected in p for p in found), found


# -- the Dockerfile ----------------------------------------------------------------------------
def _makefile_pin(package: str) -> str:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"\b{package}==([\w.]+)", text)
    assert match, f"the Makefile pins no {package}"
    return match.group(0)


def test_dockerfile_installs_like_the_makefile() -> None:
    assert DOCKERFILE.is_file(), "no Dockerfile"
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    code = " ".join(line.removesuffix("\\") for line in lines)
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'^ENTRYPOINT \["semiofed"\]', text, re.M)
    assert not _is_root(dockerfile_user()), "the image must not run as root"
    assert text.index("USER ") > text.index("pip install")  # installs as root, runs as the user
    runs = [shlex.split(cmd) for cmd in re.split(r"&&|\bRUN\b", code) if "pip install" in cmd]
    flat = [" ".join(r) for r in runs]
    setuptools, mediapipe = _makefile_pin("setuptools"), _makefile_pin("mediapipe")
    assert any(setuptools in c and "-c configs/requirements.lock" in c for c in flat), flat
    assert any(
        "--no-build-isolation" in r and "-c" in r and "." in r and "-e" not in r for r in runs
    ), flat
    assert any("--no-deps" in r and mediapipe in r for r in runs), flat
    # the install sees pyproject, the lock and every package folder
    copied = " ".join(line for line in lines if line.startswith("COPY"))
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]["package-dir"].values()
    for needed in ("pyproject.toml", "README.md", "configs", *package_dirs):
        assert re.search(rf"\b{re.escape(needed)}\b", copied), (
            f"the Dockerfile does not copy {needed}"
        )


# -- the Flower command lines --------------------------------------------------------------------
def test_superlink_command_is_secure_by_default(tmp_path: Path) -> None:
    cmd = superlink_command(
        host="0.0.0.0",
        port=8000,
        database=tmp_path / "sl.db",
        ca_cert="c/ca.crt",
        certfile="c/superlink.crt",
        keyfile="c/superlink.key",
    )
    assert Path(cmd[0]).name == "flower-superlink"
    for flag in (*TLS_FLAGS, NO_RUNTIME_DEPS):
        assert flag in cmd
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--ssl-keyfile") + 1] == "c/superlink.key"
    assert cmd[cmd.index("--port") + 1] == "8000"
    with pytest.raises(ValueError):
        superlink_command(host="h", port=1, database="db", ca_cert="ca.crt")
    insecure = superlink_command(host="h", port=1, database="db", insecure=True)
    assert "--insecure" in insecure and NO_RUNTIME_DEPS in insecure
    assert not set(TLS_FLAGS) & set(insecure)


def test_supernode_command_is_secure_by_default() -> None:
    cmd = supernode_command(
        superlink="superlink:8000",
        port=9094,
        site_name="site-01",
        data_dir="/data",
        state_dir="/state",
        ca_cert="/certs/ca.crt",
        auth_key="/keys/site-01.key",
        trusted_entities="/state/trusted_entities.yaml",
    )
    assert Path(cmd[0]).name == "flower-supernode"
    assert cmd[cmd.index("--root-certificates") + 1] == "/certs/ca.crt"
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == "/keys/site-01.key"
    assert cmd[cmd.index("--trusted-entities") + 1] == "/state/trusted_entities.yaml"
    assert cmd[cmd.index("--node-config") + 1] == (
        'site-name="site-01" data-dir="/data" state-dir="/state"'
    )
    assert "--insecure" not in cmd
    # SuperNodes never install runtime dependencies (Flower's default; no opt-in flag)
    assert "--allow-runtime-dependency-installation" not in cmd
    site = {"superlink": "s:1", "port": 1, "site_name": "a", "data_dir": "d", "state_dir": "s"}
    with pytest.raises(ValueError):
        supernode_command(**site, ca_cert="ca")
    with pytest.raises(ValueError, match="trusted_entities"):  # it would run any FAB
        supernode_command(**site, ca_cert="ca", auth_key="k")
    with pytest.raises(SemioFedError, match="double quote"):
        node_config("a", 'we"ird', "s")


def _site(tmp_path: Path, certs: ConsortiumPaths) -> Path:
    """site-01's own key and its officer's approval of the coordinator's FAB signer."""
    key = tmp_path / "site" / "site-01.key"
    write_supernode_keypair(key, key.with_suffix(".pub"))
    officer = generate_keypair(tmp_path / "officer.pem")
    signer = certs.fab_signing_pub.read_text()
    approve({"x": 1}, tmp_path / "state", officer, fab_hash="ab" * 32, signer=signer)
    return key


def test_consortium_uses_the_shared_command_lines(tmp_path: Path) -> None:
    certs = init_consortium(tmp_path / "certs")
    key = _site(tmp_path, certs)
    c = Consortium(tmp_path / "work", certs, port=8123)
    assert c.superlink_command() == superlink_command(
        host="127.0.0.1",
        port=8123,
        database=tmp_path / "work" / "superlink.db",
        ca_cert=certs.ca_cert,
        certfile=certs.superlink_cert,
        keyfile=certs.superlink_key,
    )
    spawned: list[list[str]] = []
    c._spawn = lambda name, cmd, home, extra=None: spawned.append(cmd)  # type: ignore[method-assign,assignment,return-value]
    site = c.add_site("site-01", tmp_path / "data", tmp_path / "state", key)
    c.start_supernode("site-01")
    assert spawned == [
        supernode_command(
            superlink="127.0.0.1:8123",
            port=site.port,
            site_name="site-01",
            data_dir=(tmp_path / "data").resolve(),
            state_dir=(tmp_path / "state").resolve(),
            ca_cert=certs.ca_cert,
            auth_key=key,
            trusted_entities=(tmp_path / "state").resolve() / TRUSTED_ENTITIES_FILE,
        )
    ]
    (tmp_path / "state" / TRUSTED_ENTITIES_FILE).write_text("{}")  # no signer: refused
    site.proc = None
    with pytest.raises(NotApproved, match="names no trusted FAB signer"):
        c.start_supernode("site-01")
    insecure = Consortium(tmp_path / "work2", None, port=8124)
    assert "--insecure" in insecure.superlink_command()


# -- `semiofed server superlink` / `semiofed site supernode` ---------------------------------------
@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """Record exec calls instead of replacing the test process."""
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake(file: str, args: list[str], env: dict[str, str]) -> None:
        calls.append((list(args), dict(env)))

    monkeypatch.setattr("os.execvpe", fake)
    return calls


def _site_argv(tmp_path: Path, key: Path, *extra: str) -> list[str]:
    (tmp_path / "data").mkdir(exist_ok=True)
    return [
        "site", "supernode", "--superlink", "coordinator.example.org:8000",
        "--ca", str(tmp_path / "certs" / "ca.crt"), "--key", str(key),
        "--data", str(tmp_path / "data"), "--state", str(tmp_path / "state"),
        "--name", "site-01", *extra,
    ]  # fmt: skip


def test_site_supernode_refuses_a_missing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], execs: list[Any]
) -> None:
    certs = init_consortium(tmp_path / "certs")
    key = _site(tmp_path, certs)
    missing = tmp_path / "elsewhere" / "site-01.key"
    assert main(_site_argv(tmp_path, missing)) == 2
    assert str(missing) in capsys.readouterr().err
    args = build_parser().parse_args(_site_argv(tmp_path, missing))
    with pytest.raises(SemioFedError, match=re.escape(str(missing))):
        supernode_cli.build(args)
    # --ca missing too
    argv = _site_argv(tmp_path, key)
    argv[argv.index("--ca") + 1] = str(tmp_path / "no-ca.crt")
    assert main(argv) == 2
    assert "no-ca.crt" in capsys.readouterr().err
    # no trusted FAB signer: refused (the SuperNode would run any FAB)
    assert main(_site_argv(tmp_path, key, "--trusted-entities", str(tmp_path / "none"))) == 2
    assert "no trusted FAB signer" in capsys.readouterr().err
    assert execs == []


def test_site_supernode_execs_the_secure_command(tmp_path: Path, execs: list[Any]) -> None:
    certs = init_consortium(tmp_path / "certs")
    key = _site(tmp_path, certs)
    assert main(_site_argv(tmp_path, key)) == 0
    [(cmd, env)] = execs
    assert Path(cmd[0]).name == "flower-supernode"
    assert cmd[cmd.index("--superlink") + 1] == "coordinator.example.org:8000"
    assert cmd[cmd.index("--root-certificates") + 1] == str(certs.ca_cert.resolve())
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    trusted = tmp_path / "state" / TRUSTED_ENTITIES_FILE
    assert cmd[cmd.index("--trusted-entities") + 1] == str(trusted.resolve())
    assert 'site-name="site-01"' in cmd[cmd.index("--node-config") + 1]
    assert "--insecure" not in cmd
    assert env["FLWR_HOME"] == str((tmp_path / "state" / "flwr-home").resolve())
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"


def test_site_supernode_insecure_only_when_asked(tmp_path: Path, execs: list[Any]) -> None:
    argv = [
        "site", "supernode", "--superlink", "127.0.0.1:9093", "--data", str(tmp_path),
        "--state", str(tmp_path / "state"), "--name", "site-01",
    ]  # fmt: skip
    assert main(argv) == 2  # no --ca/--key and no --insecure
    assert main([*argv, "--insecure"]) == 0
    assert "--insecure" in execs[0][0]
    assert main([*argv[:3], "no-port", *argv[4:], "--insecure"]) == 2


def test_server_superlink_refuses_missing_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], execs: list[Any]
) -> None:
    certs = init_consortium(tmp_path / "certs")
    certs.superlink_key.unlink()
    argv = ["server", "superlink", "--certs", str(certs.root), "--state", str(tmp_path / "sl")]
    assert main(argv) == 2
    assert str(certs.superlink_key.resolve()) in capsys.readouterr().err
    assert main(argv[:2] + argv[4:]) == 2  # no --certs and no --insecure
    assert "--certs" in capsys.readouterr().err
    assert execs == []


def test_server_superlink_execs_the_secure_command(tmp_path: Path, execs: list[Any]) -> None:
    certs = init_consortium(tmp_path / "certs")
    state = tmp_path / "sl"
    argv = ["server", "superlink", "--certs", str(certs.root), "--state", str(state)]
    assert main([*argv, "--port", "8443"]) == 0
    [(cmd, env)] = execs
    assert Path(cmd[0]).name == "flower-superlink"
    for flag in (*TLS_FLAGS, NO_RUNTIME_DEPS):
        assert flag in cmd
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8443"
    assert cmd[cmd.index("--database") + 1] == str(state.resolve() / "superlink.db")
    assert env["FLWR_HOME"] == str(state.resolve() / "flwr-home")
    assert env["FLWR_SUPERGRID_API_URL"] == "http://127.0.0.1:9095"  # the signed FAB's index
    assert main([*argv, "--insecure", "--dry-run"]) == 0
    assert len(execs) == 1  # --dry-run prints, does not exec
