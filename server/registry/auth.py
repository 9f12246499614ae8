"""Role tokens: creation (secret shown once, SHA-256 stored), lookup and FastAPI dependencies.

Roles: ``coordinator`` (publish, retire, everything else), ``site`` (list, read cards,
download weights), ``auditor`` (read cards, the privacy ledger, the audit log, the web page).
API calls authenticate with ``Authorization: Bearer TOKEN``. For a browser, read-only (GET)
requests also accept the ``semiofed_token`` cookie (``Secure; HttpOnly; SameSite=Strict``),
which the login form at ``/login`` sets; state-changing requests take the header only (no
cookie, so no CSRF). A token is never accepted in a URL: URLs end up in access logs, browser
history and ``Referer`` headers (:func:`token_in_url`).

Wrong tokens are rate limited per client address (:class:`FailedAuthLimiter`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from semiofed.shared.errors import SemioFedError

from .db import AuditEvent, Token, utcnow

ROLES = ("coordinator", "site", "auditor")
COOKIE = "semiofed_token"
TOKEN_PREFIX = "sfr_"

bearer = HTTPBearer(
    auto_error=False, description="A registry token: `semiofed registry token create`"
)


@dataclass(frozen=True)
class Principal:
    """The caller: the token's database id and role."""

    token_id: int
    role: str
    label: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, role: str, label: str = "") -> tuple[Token, str]:
    """Store a new token for ``role``; return its row and the secret (not retrievable later)."""
    if role not in ROLES:
        raise SemioFedError(f"--role {role!r}: choose one of {', '.join(ROLES)}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = Token(token_sha256=hash_token(secret), role=role, label=label, created_at=utcnow())
    session.add(row)
    session.flush()
    session.add(
        AuditEvent(
            at=utcnow(), action="token_create", role="cli", detail=f"{role} #{row.id} {label}"
        )
    )
    session.commit()
    return row, secret


def revoke_token(session: Session, token_id: int) -> Token:
    row = session.get(Token, token_id)
    if row is None:
        raise SemioFedError(f"no token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(
            AuditEvent(at=utcnow(), action="token_revoke", role="cli", detail=f"#{token_id}")
        )
        session.commit()
    return row


def lookup(session: Session, secret: str) -> Principal | None:
    row = session.scalar(select(Token).where(Token.token_sha256 == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        return None
    return Principal(token_id=row.id, role=row.role, label=row.label)


# query parameter names (lower case, without "-" and "_") that look like credentials
CREDENTIAL_NAMES = frozenset(
    ("auth", "authorization", "bearer", "apikey", "key", "secret", "password", "passwd", "jwt")
)


def token_in_url(path: str, query: list[tuple[str, str]]) -> str | None:
    """Where a URL carries a token or something named like one (``None``: nowhere)."""
    if TOKEN_PREFIX in path:
        return "its path"
    for name, value in query:
        normal = name.lower().replace("-", "").replace("_", "")
        if "token" in normal or normal in CREDENTIAL_NAMES or TOKEN_PREFIX in value:
            return f"query parameter {name!r}"
    return None


@dataclass
class FailedAuthLimiter:
    """At most ``max_failures`` wrong tokens per client address in any ``window`` seconds;
    beyond that every authentication from that address is refused (HTTP 429) until its
    oldest failure is ``window`` seconds old. Remembers at most ``max_clients`` addresses
    (the least recently failing one is forgotten first), so memory stays bounded."""

    max_failures: int = 20
    window: float = 300.0
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may authenticate again (0: now)."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if len(times) < self.max_failures:
                return 0
            return max(1, int(times[0] + self.window - now + 0.999))

    def failed(self, client: str) -> None:
        """Record a wrong token from ``client``."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticate(request: Request, session: Session, secret: str | None) -> Principal | None:
    """The token's principal; ``None`` without a token or with a wrong one (recorded). An
    address over its failure limit is refused with 429 before its token is even looked up."""
    if not secret:
        return None
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    client = client_address(request)
    wait = limiter.retry_after(client)
    if wait:
        raise HTTPException(
            status_code=429,
            detail=f"too many failed authentications from {client}; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    principal = lookup(session, secret)
    if principal is None:
        limiter.failed(client)
    return principal


def get_session(request: Request):  # type: ignore[no-untyped-def]
    """FastAPI dependency: one database session per request."""
    with request.app.state.registry.sessions() as session:
        yield session


def presented_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> str | None:
    if credentials is not None and credentials.scheme.lower() == "bearer":
        return credentials.credentials
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(COOKIE) or None
    return None


def authorize(principal: Principal | None, roles: tuple[str, ...]) -> Principal:
    """``principal`` if its role is in ``roles``; 401 without a valid token, 403 for a wrong role."""
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="a valid registry token is required (Authorization: Bearer TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if principal.role not in roles:
        raise HTTPException(
            status_code=403,
            detail=f"role {principal.role!r} may not do this (needs {' or '.join(roles)})",
        )
    return principal


def require(*roles: str) -> Callable[..., Principal]:
    """Dependency factory: a valid token (else 401) whose role is in ``roles`` (else 403)."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        session: Annotated[Session, Depends(get_session)],
    ) -> Principal:
        return authorize(
            authenticate(request, session, presented_token(request, credentials)), roles
        )

    return dependency


ANY_ROLE = require(*ROLES)
COORDINATOR = require("coordinator")
DOWNLOADERS = require("coordinator", "site")
OVERSIGHT = require("coordinator", "auditor")
