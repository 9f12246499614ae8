"""One templating approach for every HTML page SemioFed writes: Jinja2 with autoescaping.

Each package keeps its pages in its own ``templates/`` folder (the site's analysis report
in ``client/templates``, the privacy officer's report in ``privacy/templates``, the
registry's pages in ``server/registry/templates``); :func:`environment` also finds the
shared macros (``shared/templates/macros.html``: tables) from any of them. Plots come from
:mod:`semiofed.shared.svgplot`.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import jinja2

SHARED = "semiofed.shared"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: ``–`` for none, floats to ``digits`` decimals (tiny ones in exponent
    form), anything else as text (escaped by the template)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isfinite(value) and value != 0 and abs(value) < 10**-digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


@cache
def environment(package: str = SHARED) -> jinja2.Environment:
    """The Jinja2 environment of ``package``'s templates (then the shared ones)."""
    loaders = [jinja2.PackageLoader(package, "templates")]
    if package != SHARED:
        loaders.append(jinja2.PackageLoader(SHARED, "templates"))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


def render(package: str, template: str, **context: Any) -> str:
    """``template`` of ``package`` rendered with ``context``."""
    return environment(package).get_template(template).render(**context)
