"""Request and response bodies of the registry API (they shape ``/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every error answer: a message, or FastAPI's list of request validation problems."""

    detail: str | list[dict[str, Any]]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error status codes."""
    meaning = {
        400: "bad request (e.g. a signature the registry's pinned key rejects)",
        401: "no valid token",
        403: "the token's role may not do this",
        404: "no such version",
        409: "the version name or sequence is taken",
        410: "the version is retired",
        413: "upload too large",
        422: "invalid request or manifest",
        429: "too many failed authentications from this address; see Retry-After",
    }
    return {code: {"model": ErrorOut, "description": meaning[code]} for code in codes}


class Health(BaseModel):
    status: Literal["ok"]
    schema_version: int


class VersionSummary(BaseModel):
    version: str
    sequence: int
    status: Literal["active", "retired"]
    created_at: str
    weights_sha256: str
    weights_size: int
    architecture_hash: str
    key_fingerprint: str
    rounds: int
    sites: list[str]
    privacy_unit: str | None
    epsilon_final: dict[str, float | None] = Field(
        description="each site's cumulative ε for the run"
    )
    retired_at: str | None
    retired_reason: str | None


class VersionList(BaseModel):
    versions: list[VersionSummary]


class VersionDetail(VersionSummary):
    card: dict[str, Any]


class SignedRetirement(BaseModel):
    statement: dict[str, Any] = Field(description="a semiofed-model-retirement/1 statement")
    signature: str = Field(description="base64 Ed25519 signature of the canonical JSON statement")


class RetireRequest(SignedRetirement):
    signature: str = Field(max_length=200)


class SignedManifest(BaseModel):
    manifest: dict[str, Any]
    signature: str = Field(description="base64 Ed25519 signature of the canonical JSON manifest")
    retirement: SignedRetirement | None = Field(
        default=None, description="the coordinator's signed retirement, if the version is retired"
    )


class PublishRequest(BaseModel):
    manifest: dict[str, Any]
    signature: str = Field(max_length=200)


class Upload(BaseModel):
    sha256: str
    size: int


class LedgerEntry(BaseModel):
    version: str
    site: str
    round: int
    epsilon: float | None
    epsilon_round: float | None = None
    delta: float | None
    privacy_unit: str | None
    accountant: str | None


class Ledger(BaseModel):
    entries: list[LedgerEntry]


class AuditEventOut(BaseModel):
    at: str
    action: str
    role: str
    token_id: int | None
    version: str | None
    detail: str


class AuditLog(BaseModel):
    summary: dict[str, int] = Field(description="count of events per action")
    downloads: dict[str, int] = Field(description="weight downloads per version")
    events: list[AuditEventOut]
