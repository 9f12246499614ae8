"""Role tokens: creation (secret shown once, SHA-256 stored), lookup and FastAPI dependencies.

Roles: ``coordinator`` (publish, retire, everything else), ``site`` (list, read cards,
download weights), ``auditor`` (read cards, the privacy ledger, the audit log, the web page).
API calls authenticate with ``Authorization: Bearer TOKEN``. For a browser, read-only (GET)
requests also accept the ``semiofed_token`` cookie, which the web page sets after a visit
with ``?token=…``; state-changing requests take the header only (no cookie, so no CSRF).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
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
        secret = presented_token(request, credentials)
        return authorize(lookup(session, secret) if secret else None, roles)

    return dependency


ANY_ROLE = require(*ROLES)
COORDINATOR = require("coordinator")
DOWNLOADERS = require("coordinator", "site")
OVERSIGHT = require("coordinator", "auditor")
