"""``semiofed registry …``: serve the model registry, publish runs, manage tokens and keys.

Heavy imports (FastAPI, SQLAlchemy, uvicorn) happen inside the handlers so that
``semiofed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from semiofed.shared.cli_paths import out_folder
from semiofed.shared.errors import SemioFedError

DEFAULT_DATA = "registry-data"
TOKEN_ENV = "SEMIOFED_REGISTRY_TOKEN"


def _data(args: argparse.Namespace) -> Path:
    return Path(args.data)


def _db_url(args: argparse.Namespace, create: bool = False) -> str:
    """The database URL; only commands that set a registry up (``create``) make ``--data``."""
    from .registry.publish import default_db_url

    if args.db:
        return args.db
    if create:
        _data(args).mkdir(parents=True, exist_ok=True)
    elif not _data(args).is_dir():
        raise SemioFedError(
            f"--data {args.data}: no such folder; set a registry up with "
            f"`semiofed registry keygen --data {args.data}`"
        )
    return default_db_url(_data(args))


def _private_key(args: argparse.Namespace) -> Path:
    return Path(args.key) if args.key else _data(args) / "keys" / "coordinator.pem"


def _public_key(args: argparse.Namespace) -> Path:
    if args.coordinator_key:
        return Path(args.coordinator_key)
    path = _data(args) / "keys" / "coordinator.pub.pem"
    if not path.exists():
        raise SemioFedError(
            f"{path}: no coordinator public key; run `semiofed registry keygen --data {args.data}` "
            "or pass --coordinator-key PUB.pem"
        )
    return path


def _open_registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .registry.publish import open_registry

    return open_registry(_db_url(args), _data(args), _public_key(args))


def _sessions(args: argparse.Namespace, create: bool = False):  # type: ignore[no-untyped-def]
    from .registry.db import open_database

    return open_database(_db_url(args, create))


def _remote(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(url, token)`` for remote mode, ``None`` for direct database access."""
    if not args.url:
        return None
    if args.db:
        raise SemioFedError(
            "give either --url (a running registry) or --db (direct access), not both"
        )
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise SemioFedError(f"--url needs a coordinator token: --token TOKEN or ${TOKEN_ENV}")
    return args.url, token


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from semiofed.privacy.keys import fingerprint

    from .registry.app import create_app
    from .registry.publish import check_stored

    registry = _open_registry(args)
    check_stored(registry)
    print(
        f"registry: database {_db_url(args)}, artifacts in {_data(args).resolve()}, "
        f"coordinator key {fingerprint(registry.coordinator_key)[:16]}…",
        flush=True,
    )
    uvicorn.run(create_app(registry), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .registry.publish import publish_local, publish_remote

    remote = _remote(args)
    if remote:
        summary = publish_remote(
            args.run_dir, remote[0], remote[1], _private_key(args), args.version
        )
        version, sha = summary["version"], summary["weights_sha256"]
    else:
        row = publish_local(args.run_dir, _open_registry(args), _private_key(args), args.version)
        version, sha = row.version, row.weights_sha256
    print(f"published {version} (weights SHA-256 {sha})")
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote:
        import httpx

        from .registry.publish import checked

        with httpx.Client(base_url=remote[0].rstrip("/"), timeout=30) as client:
            try:
                checked(
                    client.post(
                        f"/api/v1/models/{args.version}/retire",
                        json={"reason": args.reason},
                        headers={"Authorization": f"Bearer {remote[1]}"},
                    )
                )
            except httpx.HTTPError as exc:
                raise SemioFedError(f"{remote[0]}: registry unreachable ({exc})") from None
    else:
        from .registry.publish import retire_version

        with _sessions(args)() as session:
            retire_version(session, args.version, args.reason, "cli", None)
    print(f"retired {args.version}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from .registry.auth import create_token

    with _sessions(args, create=True)() as session:
        row, secret = create_token(session, args.role, args.label)
    print(
        f"# {args.role} token #{row.id}{f' ({args.label})' if args.label else ''}; shown only once:"
    )
    print(secret)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from .registry.db import Token

    with _sessions(args)() as session:
        rows = list(session.scalars(select(Token).order_by(Token.id)))
    print(f"{'id':>4}  {'role':<12} {'created':<21} {'revoked':<21} label")
    for row in rows:
        print(
            f"{row.id:>4}  {row.role:<12} {row.created_at:<21} {row.revoked_at or '-':<21} {row.label}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from .registry.auth import revoke_token

    with _sessions(args)() as session:
        revoke_token(session, args.id)
    print(f"revoked token #{args.id}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from semiofed.privacy.keys import fingerprint, generate_keypair

    private = _private_key(args)
    private.parent.mkdir(parents=True, exist_ok=True)
    public = private.with_suffix(".pub.pem")
    key = generate_keypair(private, public)
    print(f"private key: {private} (keep it on the coordinator only)")
    print(f"public key:  {public} (give it to every site: `semiofed site pull --coordinator-key`)")
    print(f"fingerprint: {fingerprint(key.public_key())}")
    return 0


def _storage_args(p: argparse.ArgumentParser, db: bool = True) -> None:
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        type=out_folder,
        metavar="DIR",
        help=f"registry data folder: artifacts, keys/, registry.db (default: {DEFAULT_DATA})",
    )
    if db:
        p.add_argument(
            "--db",
            metavar="URL",
            help="database URL (default: sqlite:///DIR/registry.db; PostgreSQL: postgresql+psycopg://…)",
        )


def _remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", help="a running registry, e.g. http://127.0.0.1:8700 (else --db/--data directly)"
    )
    p.add_argument("--token", help=f"coordinator token for --url (default: ${TOKEN_ENV})")


def register(cmds: argparse._SubParsersAction) -> None:
    """Add the ``registry`` subcommands to ``cmds``."""
    p = cmds.add_parser(
        "serve",
        help="run the registry web service (API, web page, /openapi.json)",
        description="Serve the model registry over HTTP. Every route but /health needs a token.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8700, help="port (default: 8700)")
    _storage_args(p)
    p.add_argument(
        "--coordinator-key",
        metavar="PUB.pem",
        help="coordinator public key to pin (default: DIR/keys/coordinator.pub.pem)",
    )
    p.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    p.set_defaults(func=cmd_serve)

    p = cmds.add_parser(
        "publish",
        help="sign a finished run and publish it as a new version",
        description="Build the model card of RUN_DIR (model.safetensors, model_config.json, "
        "run.json), sign weights hash + card with the coordinator key and publish.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the ServerApp's run directory")
    p.add_argument("--version", help="version name (default: v<N+1>)")
    p.add_argument(
        "--key",
        metavar="PRIVATE.pem",
        help="coordinator private key (default: DIR/keys/coordinator.pem)",
    )
    p.add_argument(
        "--coordinator-key", metavar="PUB.pem", help="pinned public key for direct --db publishing"
    )
    _storage_args(p)
    _remote_args(p)
    p.set_defaults(func=cmd_publish)

    p = cmds.add_parser("retire", help="retire a version (sites will no longer install it)")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--reason", default="", help="why, shown on the model card")
    _storage_args(p)
    _remote_args(p)
    p.set_defaults(func=cmd_retire)

    p = cmds.add_parser("keygen", help="create the coordinator's Ed25519 signing key pair")
    _storage_args(p, db=False)
    p.add_argument(
        "--key", metavar="PRIVATE.pem", help="where to write it (default: DIR/keys/coordinator.pem)"
    )
    p.set_defaults(func=cmd_keygen)

    token = cmds.add_parser("token", help="create, list or revoke access tokens")
    tcmds = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    p = tcmds.add_parser(
        "create", help="create a token and print it once (only its SHA-256 is stored)"
    )
    p.add_argument(
        "--role",
        required=True,
        choices=("coordinator", "site", "auditor"),
        help="coordinator: publish/retire; site: list/download; auditor: cards, ledger, audit log",
    )
    p.add_argument("--label", default="", help="who holds it, e.g. the site name")
    _storage_args(p)
    p.set_defaults(func=cmd_token_create)
    p = tcmds.add_parser("list", help="list tokens (never their secrets)")
    _storage_args(p)
    p.set_defaults(func=cmd_token_list)
    p = tcmds.add_parser("revoke", help="revoke a token by id")
    p.add_argument("id", type=int)
    _storage_args(p)
    p.set_defaults(func=cmd_token_revoke)
