"""``semiofed registry …``: serve the model registry, publish runs, manage tokens and keys.

Heavy imports (FastAPI, SQLAlchemy, uvicorn) happen inside the handlers so that
``semiofed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from semiofed.shared.cli_paths import folder, out_folder
from semiofed.shared.errors import SemioFedError
from semiofed.shared.registry_http import CA_HELP, is_loopback

DEFAULT_DATA = "registry-data"
TOKEN_ENV = "SEMIOFED_REGISTRY_TOKEN"
GRACEFUL_SHUTDOWN = 5  # seconds `serve` waits for open connections when stopped


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


def check_transport(args: argparse.Namespace) -> str:
    """``https`` or ``http`` for ``serve``, after checking the TLS files and the rule: plain
    HTTP only on a loopback address, or with ``--insecure-http``."""
    if (args.certfile is None) != (args.keyfile is None):
        raise SemioFedError("--certfile and --keyfile go together: give both or neither")
    if args.certfile is None:
        if not is_loopback(args.host) and not args.insecure_http:
            raise SemioFedError(
                f"--host {args.host}: refusing plain HTTP on a non-loopback address (tokens "
                "would travel in clear); give --certfile/--keyfile, or --insecure-http"
            )
        return "http"
    import ssl

    for flag, path in (("--certfile", args.certfile), ("--keyfile", args.keyfile)):
        if not Path(path).is_file():
            raise SemioFedError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            args.certfile, args.keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        raise SemioFedError(
            f"--certfile {args.certfile} / --keyfile {args.keyfile}: not a matching PEM "
            f"certificate and private key ({exc})"
        ) from None
    return "https"


def access_log_config(level: str) -> dict:
    """uvicorn's logging set-up with its own access log replaced by the registry's, which
    writes paths without query strings (see ``registry.app``)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["semiofed.registry.access"] = {
        "handlers": ["access"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    scheme = check_transport(args)
    import uvicorn

    from semiofed.privacy.keys import fingerprint

    from .registry.app import create_app
    from .registry.auth import FailedAuthLimiter
    from .registry.publish import check_stored

    if args.max_auth_failures < 1 or args.auth_window <= 0:
        raise SemioFedError("--max-auth-failures must be >= 1 and --auth-window > 0")
    registry = _open_registry(args)
    check_stored(registry)
    print(
        f"registry: {scheme}://{args.host}:{args.port}, database {_db_url(args)}, artifacts in "
        f"{_data(args).resolve()}, coordinator key {fingerprint(registry.coordinator_key)[:16]}…",
        flush=True,
    )
    limiter = FailedAuthLimiter(max_failures=args.max_auth_failures, window=args.auth_window)
    uvicorn.run(
        create_app(registry, limiter),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=access_log_config(args.log_level),
        access_log=False,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
        # a TLS client holding an idle keep-alive connection must not stall a restart
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .registry.publish import publish_local, publish_remote

    remote = _remote(args)
    if remote:
        summary = publish_remote(
            args.run_dir, remote[0], remote[1], _private_key(args), args.version, args.ca
        )
        version, sha = summary["version"], summary["weights_sha256"]
    else:
        row = publish_local(args.run_dir, _open_registry(args), _private_key(args), args.version)
        version, sha = row.version, row.weights_sha256
    print(f"published {version} (weights SHA-256 {sha})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .public_explanations import write_explanations

    path = write_explanations(args.run_dir, args.public_data)
    print(f"wrote {path}: global explanations on public data (the card carries them)")
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    from .registry.publish import retire_local, retire_remote

    remote = _remote(args)
    if remote:
        retire_remote(args.version, args.reason, *remote, _private_key(args), args.ca)
    else:
        retire_local(_open_registry(args), args.version, args.reason, _private_key(args))
    print(f"retired {args.version} (retirement signed with {_private_key(args)})")
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
        "--url",
        help="a running registry, e.g. https://registry.example.org:8700 (else --db/--data "
        "directly); plain http:// only to a loopback host",
    )
    p.add_argument("--token", help=f"coordinator token for --url (default: ${TOKEN_ENV})")
    p.add_argument("--ca", metavar="CA.crt", help=CA_HELP)


def _signing_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--key",
        metavar="PRIVATE.pem",
        help=f"coordinator private key that signs the {what} (default: DIR/keys/coordinator.pem)",
    )
    p.add_argument(
        "--coordinator-key", metavar="PUB.pem", help="pinned public key for direct --db access"
    )


def register(cmds: argparse._SubParsersAction) -> None:
    """Add the ``registry`` subcommands to ``cmds``."""
    p = cmds.add_parser(
        "serve",
        help="run the registry web service (API, web page, /openapi.json)",
        description="Serve the model registry over HTTPS (--certfile/--keyfile); plain HTTP "
        "only on a loopback address or with --insecure-http. Every route but /health needs a "
        "token, sent in the Authorization header or the login form's cookie, never in a URL.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8700, help="port (default: 8700)")
    p.add_argument(
        "--certfile",
        metavar="CERT.pem",
        help="TLS certificate (PEM, chain first), e.g. certs/superlink.crt from `server init`",
    )
    p.add_argument("--keyfile", metavar="KEY.pem", help="its private key (PEM)")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (tokens travel in clear; debugging "
        "or behind a TLS proxy on this host only)",
    )
    p.add_argument(
        "--max-auth-failures",
        type=int,
        default=20,
        metavar="N",
        help="wrong tokens per client address per --auth-window before HTTP 429 (default: 20)",
    )
    p.add_argument(
        "--auth-window",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="the failed-authentication window (default: 300)",
    )
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
    _signing_args(p, "manifest")
    _storage_args(p)
    _remote_args(p)
    p.set_defaults(func=cmd_publish)

    p = cmds.add_parser(
        "explain",
        help="explain a run's model on public data for its model card (before publishing)",
        description="Per class: mean Shapley contribution of each input stream and the share "
        "of integrated gradients per body region, on the public tuning patients (simulator "
        "data, no patient; generated in --public-data unless there). Writes "
        "RUN_DIR/explanations.json, which `registry publish` puts into the signed card.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=folder, help="the ServerApp's run directory")
    p.add_argument(
        "--public-data",
        type=Path,
        default=Path("public-tuning"),
        help="folder of the public tuning data (default: public-tuning)",
    )
    p.set_defaults(func=cmd_explain)

    p = cmds.add_parser(
        "retire",
        help="retire a version with a signed statement (sites will no longer install it)",
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--reason", default="", help="why, shown on the model card")
    _signing_args(p, "retirement")
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
