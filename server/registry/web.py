"""Server-rendered pages for coordinators and auditors (no JavaScript).

``/`` lists the versions with download links and plots the newest active version's ε per
site over rounds; ``/versions/{v}`` shows that version's model card. A browser signs in with
the form at ``/login`` (a POST, so the token is in no URL): the token goes into a
``Secure; HttpOnly; SameSite=Strict`` cookie, so the browser sends it back over HTTPS (or to
localhost) only, scripts cannot read it and other sites cannot make the browser send it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session

from semiofed.shared.features import STREAM_NAMES
from semiofed.shared.html import environment
from semiofed.shared.svgplot import line_plot

from . import queries
from .auth import COOKIE, Principal, authenticate, authorize, bearer, get_session, presented_token
from .publish import RegistryRefusal

WEB_ROLES = ("coordinator", "auditor")
templates = Jinja2Templates(env=environment("semiofed.server.registry"))
router = APIRouter(include_in_schema=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


templates.env.filters["num"] = lambda v: f"{v:.4g}" if _is_number(v) else ("" if v is None else v)


def epsilon_plot(card: dict[str, Any]) -> Markup:
    per_site = card.get("privacy", {}).get("per_site", {})
    series = {
        site: [
            (p["round"], p["epsilon"])
            for p in rec.get("epsilon_by_round", [])
            if _is_number(p.get("epsilon"))
        ]
        for site, rec in per_site.items()
    }
    return line_plot(series, "Cumulative ε per site", "round", "ε")


def metric_plots(card: dict[str, Any]) -> list[Markup]:
    rows = card.get("metrics", [])
    names = sorted({k for row in rows for k, v in row.items() if k != "round" and _is_number(v)})
    return [
        line_plot(
            {name: [(r["round"], r[name]) for r in rows if _is_number(r.get(name))]},
            name,
            "round",
            name,
            width=420,
            height=220,
            y_from_zero=False,
        )
        for name in names
    ]


MAX_LOGIN_FORM = 4096


def login_page(request: Request, status: int, message: str = "") -> Response:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"who": None, "message": message},
        status_code=status,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def _web_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[Session, Depends(get_session)],
) -> Principal | Response:
    """The signed-in coordinator or auditor; without a valid token, the login form (401)."""
    principal = authenticate(request, session, presented_token(request, credentials))
    if principal is None:
        return login_page(request, 401, "Sign in with a coordinator or auditor token.")
    return authorize(principal, WEB_ROLES)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return login_page(request, 200)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, session: Annotated[Session, Depends(get_session)]) -> Response:
    """Check the form's token; on success set the cookie and go to the version list."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_FORM:
            raise RegistryRefusal(413, f"the login form is larger than {MAX_LOGIN_FORM} bytes")
    token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    principal = await run_in_threadpool(authenticate, request, session, token)
    if principal is None:
        return login_page(request, 401, "That token is not valid (wrong, revoked or mistyped).")
    if principal.role not in WEB_ROLES:
        return login_page(request, 403, f"A {principal.role} token cannot open these pages.")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="strict", path="/")
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, secure=True, samesite="strict", path="/")
    return response


WebPrincipal = Annotated[Principal | Response, Depends(_web_principal)]


@router.get("/", response_class=HTMLResponse)
def index(
    request: Request, who: WebPrincipal, session: Annotated[Session, Depends(get_session)]
) -> Response:
    if isinstance(who, Response):
        return who
    rows = queries.list_versions(session)
    latest = next((r for r in rows if r.status == "active"), None)
    card = queries.card_dict(latest) if latest else None
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "who": who,
            "versions": [queries.summarize(r) for r in rows],
            "latest": latest.version if latest else None,
            "epsilon_plot": epsilon_plot(card) if card else None,
        },
    )


def top_regions(shares: dict[str, Any], n: int = 3) -> str:
    """The ``n`` body regions with the largest explanation share, e.g. 'trunk 31 %, …'."""
    ranked = sorted(((v, k) for k, v in shares.items() if _is_number(v)), reverse=True)[:n]
    return ", ".join(f"{k} {v:.0%}" for v, k in ranked)


@router.get("/versions/{version}", response_class=HTMLResponse)
def version_page(
    version: str,
    request: Request,
    who: WebPrincipal,
    session: Annotated[Session, Depends(get_session)],
) -> Response:
    if isinstance(who, Response):
        return who
    row = queries.get_version(session, version)
    card = queries.card_dict(row)
    metric_names = sorted({k for m in card.get("metrics", []) for k in m if k != "round"})
    return templates.TemplateResponse(
        request,
        "version.html",
        {
            "who": who,
            "v": queries.summarize(row),
            "card": card,
            "metric_names": metric_names,
            "epsilon_plot": epsilon_plot(card),
            "metric_plots": metric_plots(card),
            "pretty": lambda obj: json.dumps(obj, indent=2, sort_keys=True),
            "explanation_streams": STREAM_NAMES,
            "top_regions": top_regions,
        },
    )
