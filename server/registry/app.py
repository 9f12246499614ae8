"""The registry's FastAPI application: ``create_app(registry)``.

Routes (every one but ``/health`` needs a token; roles in brackets)::

    GET  /health                          liveness and schema version (no token)
    GET  /openapi.json                    the API description          [any role]
    GET  /api/v1/models                   versions, newest first        [any role]
    GET  /api/v1/models/{v}               summary + model card          [any role]
    GET  /api/v1/models/{v}/card          the model card                [any role]
    GET  /api/v1/models/{v}/manifest      signed manifest + signature   [any role]
    GET  /api/v1/models/{v}/weights       safetensors weights           [coordinator, site]
    POST /api/v1/uploads                  stage weights (octet-stream)  [coordinator]
    POST /api/v1/models                   publish a signed manifest     [coordinator]
    POST /api/v1/models/{v}/retire        retire a version              [coordinator]
    GET  /api/v1/ledger                   ε per site, round and version [coordinator, auditor]
    GET  /api/v1/audit                    registry audit log + summary  [coordinator, auditor]
    GET  /  and  /versions/{v}            web pages                     [coordinator, auditor]
    GET  /login, POST /login, POST /logout  the browser's sign-in form (sets the cookie)

A URL with a token in its query string is refused (400) before any route runs, and the
access log (``semiofed.registry.access``) records paths without their query strings.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.orm import Session

from semiofed.shared.errors import SemioFedError
from semiofed.shared.manifest import VERSION_RE

from . import queries, web
from .auth import (
    ANY_ROLE,
    COORDINATOR,
    DOWNLOADERS,
    OVERSIGHT,
    FailedAuthLimiter,
    Principal,
    client_address,
    get_session,
    token_in_url,
)
from .db import SCHEMA_VERSION, AuditEvent, utcnow
from .publish import Registry, RegistryRefusal, register_version, retire_version
from .schemas import (
    AuditLog,
    Health,
    Ledger,
    PublishRequest,
    RetireRequest,
    SignedManifest,
    Upload,
    VersionDetail,
    VersionList,
    VersionSummary,
    errors,
)
from .storage import NotSafetensors, UploadTooLarge

VersionPath = Annotated[str, Path(pattern=VERSION_RE.pattern, description="version name, e.g. v3")]
SessionDep = Annotated[Session, Depends(get_session)]

ACCESS_LOG = logging.getLogger("semiofed.registry.access")

api = APIRouter(prefix="/api/v1", tags=["models"], responses=errors(400, 401, 403, 422, 429))


@api.get("/models", response_model=VersionList)
def list_models(
    session: SessionDep,
    _: Annotated[Principal, Depends(ANY_ROLE)],
    status: Literal["active", "retired"] | None = None,
) -> VersionList:
    return VersionList(
        versions=[queries.summarize(r) for r in queries.list_versions(session, status)]
    )


@api.get("/models/{version}", response_model=VersionDetail, responses=errors(404))
def get_model(
    version: VersionPath, session: SessionDep, _: Annotated[Principal, Depends(ANY_ROLE)]
) -> VersionDetail:
    return queries.detail(queries.get_version(session, version))


@api.get("/models/{version}/card", response_model=dict, responses=errors(404))
def get_card(
    version: VersionPath, session: SessionDep, _: Annotated[Principal, Depends(ANY_ROLE)]
) -> dict:
    return queries.card_dict(queries.get_version(session, version))


@api.get("/models/{version}/manifest", response_model=SignedManifest, responses=errors(404))
def get_manifest(
    version: VersionPath, session: SessionDep, _: Annotated[Principal, Depends(ANY_ROLE)]
) -> SignedManifest:
    row = queries.get_version(session, version)
    return SignedManifest(
        manifest=queries.manifest_of(row),
        signature=row.signature,
        retirement=queries.retirement_of(row),
    )


@api.get(
    "/models/{version}/weights",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **errors(404, 410)},
)
def get_weights(
    version: VersionPath,
    request: Request,
    session: SessionDep,
    who: Annotated[Principal, Depends(DOWNLOADERS)],
) -> FileResponse:
    row = queries.get_version(session, version)
    if row.status == "retired" and who.role != "coordinator":
        raise RegistryRefusal(
            410, f"version {version!r} is retired: {row.retired_reason or 'no reason given'}"
        )
    session.add(
        AuditEvent(
            at=utcnow(), action="download", role=who.role, token_id=who.token_id, version=version
        )
    )
    session.commit()
    registry: Registry = request.app.state.registry
    return FileResponse(
        registry.store.weights(version),
        media_type="application/octet-stream",
        filename=f"{version}.safetensors",
        headers={"X-Weights-SHA256": row.weights_sha256},
    )


@api.post(
    "/uploads",
    response_model=Upload,
    status_code=201,
    responses=errors(413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_weights(request: Request, _: Annotated[Principal, Depends(COORDINATOR)]) -> Upload:
    store = request.app.state.registry.store
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        store.check_size(int(declared))
    tmp, size = store.new_upload(), 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                store.check_size(size)
                fh.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sha, size = await run_in_threadpool(store.adopt, tmp)  # hashing/validation off the event loop
    return Upload(sha256=sha, size=size)


@api.post("/models", response_model=VersionSummary, status_code=201, responses=errors(409))
def publish(
    body: PublishRequest,
    request: Request,
    session: SessionDep,
    who: Annotated[Principal, Depends(COORDINATOR)],
) -> VersionSummary:
    row = register_version(
        request.app.state.registry, session, body.manifest, body.signature, who.role, who.token_id
    )
    return queries.summarize(row)


@api.post("/models/{version}/retire", response_model=VersionSummary, responses=errors(404))
def retire(
    version: VersionPath,
    body: RetireRequest,
    request: Request,
    session: SessionDep,
    who: Annotated[Principal, Depends(COORDINATOR)],
) -> VersionSummary:
    row = retire_version(
        request.app.state.registry,
        session,
        version,
        body.statement,
        body.signature,
        who.role,
        who.token_id,
    )
    return queries.summarize(row)


@api.get("/ledger", response_model=Ledger, tags=["oversight"], responses=errors(404))
def get_ledger(
    session: SessionDep,
    _: Annotated[Principal, Depends(OVERSIGHT)],
    version: Annotated[str | None, Query(pattern=VERSION_RE.pattern)] = None,
) -> Ledger:
    rows = [queries.get_version(session, version)] if version else queries.list_versions(session)
    return Ledger(entries=queries.ledger(rows))


@api.get("/audit", response_model=AuditLog, tags=["oversight"])
def get_audit(
    session: SessionDep,
    _: Annotated[Principal, Depends(OVERSIGHT)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditLog:
    return queries.audit_log(session, limit)


def _refusal(_: Request, exc: Exception) -> JSONResponse:
    """User-level errors become 4xx answers with the message as ``detail``."""
    if isinstance(exc, RegistryRefusal):
        code = exc.status
    elif isinstance(exc, UploadTooLarge):
        code = 413
    elif isinstance(exc, NotSafetensors):
        code = 422
    else:
        code = 400
    return JSONResponse({"detail": str(exc)}, status_code=code)


def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 answer, with undecodable request bytes shown replaced rather than a 500."""
    assert isinstance(exc, RequestValidationError)
    problems = jsonable_encoder(
        exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}
    )
    return JSONResponse({"detail": problems}, status_code=422)


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


TOKEN_IN_URL = (
    "a token in the URL ({where}) is refused: URLs end up in logs and "
    "browser history. Send it as 'Authorization: Bearer TOKEN' or sign in at /login, and "
    "revoke this token (`semiofed registry token revoke ID`)"
)


def create_app(registry: Registry, limiter: FailedAuthLimiter | None = None) -> FastAPI:
    """The registry application serving ``registry``; ``limiter`` bounds failed
    authentications per client address (default: :class:`FailedAuthLimiter`'s)."""
    app = FastAPI(
        title="SemioFed model registry",
        version="1",
        description="Signed, versioned SemioFed models with privacy-aware model cards.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.registry = registry
    app.state.auth_limiter = limiter or FailedAuthLimiter()

    @app.get("/health", response_model=Health, tags=["health"])
    def health() -> Health:
        return Health(status="ok", schema_version=SCHEMA_VERSION)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Annotated[Principal, Depends(ANY_ROLE)]) -> JSONResponse:
        return JSONResponse(app.openapi())

    app.include_router(api)
    app.include_router(web.router)
    app.add_exception_handler(SemioFedError, _refusal)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        """Refuse tokens in URLs, log the path only, set the security headers."""
        where = token_in_url(request.url.path, request.query_params.multi_items())
        if where is not None:
            response = JSONResponse({"detail": TOKEN_IN_URL.format(where=where)}, status_code=400)
        else:
            response = await call_next(request)
        ACCESS_LOG.info(
            '%s - "%s %s HTTP/%s" %d',
            client_address(request),
            request.method,
            "[a path holding a token]" if where == "its path" else request.url.path,
            request.scope.get("http_version", "1.1"),
            response.status_code,
        )
        response.headers.update(SECURITY_HEADERS)
        if request.url.path != "/health":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
