"""Registry database: SQLAlchemy tables, a ``schema_version`` table and forward migrations.

SQLite (``sqlite:///path/registry.db``) by default; a PostgreSQL URL
(``postgresql+psycopg://…``) works with the same code. Each migration brings the schema
from version ``n - 1`` to ``n`` in one transaction and records itself in ``schema_version``;
a database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Connection,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from semiofed.shared.errors import SemioFedError

SCHEMA_VERSION = 3
SUPPORTED_DIALECTS = ("sqlite", "postgresql")


def utcnow() -> str:
    """Current UTC time as ISO-8601 text (stored as text: portable across SQLite and PostgreSQL)."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied_at: Mapped[str] = mapped_column(String(32))


class Token(Base):
    """An access token; only the SHA-256 of the secret is stored."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ModelVersion(Base):
    """One published model: the signed manifest (which holds the card) and its weights' hash."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sequence: Mapped[int] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    weights_size: Mapped[int] = mapped_column(Integer)
    architecture_hash: Mapped[str] = mapped_column(String(200))
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    manifest_json: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    published_by: Mapped[int | None] = mapped_column(ForeignKey("tokens.id"), nullable=True)
    retired_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    retired_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    retirement_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    retirement_signature: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditEvent(Base):
    """Who did what in the registry (publish, retire, download, token creation)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32), index=True)
    role: Mapped[str] = mapped_column(String(16))
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


def _create(*tables: type[Base]) -> Callable[[Connection], None]:
    def step(conn: Connection) -> None:
        for table in tables:
            table.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]

    return step


def _add_columns(table: type[Base], *names: str) -> Callable[[Connection], None]:
    """Add the named (nullable) columns of ``table`` that the database lacks."""

    def step(conn: Connection) -> None:
        present = {c["name"] for c in inspect(conn).get_columns(table.__tablename__)}
        for name in names:
            if name not in present:
                column = table.__table__.c[name]  # type: ignore[attr-defined]
                kind = column.type.compile(conn.dialect)
                conn.execute(text(f"ALTER TABLE {table.__tablename__} ADD COLUMN {name} {kind}"))

    return step


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _create(Token, ModelVersion),
    2: _create(AuditEvent),
    3: _add_columns(ModelVersion, "retirement_json", "retirement_signature"),  # signed retirements
}


def schema_version(conn: Connection) -> int:
    SchemaVersion.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
    return int(conn.scalar(select(func.max(SchemaVersion.version))) or 0)


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to ``target``; return the resulting schema version."""
    with engine.begin() as conn:
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise SemioFedError(
                f"{engine.url.render_as_string(hide_password=True)}: registry schema version "
                f"{current} is newer than this SemioFed supports ({SCHEMA_VERSION}); upgrade SemioFed"
            )
        for version in range(current + 1, target + 1):
            MIGRATIONS[version](conn)
            conn.execute(insert(SchemaVersion).values(version=version, applied_at=utcnow()))
        return max(current, target)


def make_engine(url: str) -> Engine:
    """An engine for a SQLite or PostgreSQL URL, with a clear error for anything else."""
    try:
        engine = create_engine(
            url, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {}
        )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise SemioFedError(
            f"--db {url!r}: cannot open ({exc}); use sqlite:///PATH or a PostgreSQL URL "
            "(postgresql+psycopg://user:pass@host/db, needs the psycopg package)"
        ) from None
    if engine.dialect.name not in SUPPORTED_DIALECTS:
        raise SemioFedError(f"--db {url!r}: unsupported database {engine.dialect.name!r}")
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    return engine


def open_database(url: str) -> sessionmaker:
    """Open (creating or migrating as needed) the registry database at ``url``."""
    engine = make_engine(url)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        raise SemioFedError(f"--db {url!r}: cannot open the registry database ({exc})") from None
    return sessionmaker(engine, expire_on_commit=False)
