"""Server-rendered pages for coordinators and auditors (no JavaScript).

``/`` lists the versions with download links and plots the newest active version's ε per
site over rounds; ``/versions/{v}`` shows that version's model card. A browser signs in by
opening any page with ``?token=TOKEN`` once: the token moves into an HttpOnly, SameSite=Strict
cookie and the page reloads without it in the address bar.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session

from . import queries
from .auth import COOKIE, Principal, authorize, bearer, get_session, lookup, presented_token
from .svgplot import line_plot

WEB_ROLES = ("coordinator", "auditor")
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
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


def _web_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[Session, Depends(get_session)],
    token: Annotated[str | None, Query(description="sign in once; moved into a cookie")] = None,
) -> Principal | Response:
    if token is not None:
        authorize(lookup(session, token), WEB_ROLES)
        response = RedirectResponse(request.url.path, status_code=303)
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response
    secret = presented_token(request, credentials)
    return authorize(lookup(session, secret) if secret else None, WEB_ROLES)


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
        },
    )
