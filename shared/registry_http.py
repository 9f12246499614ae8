"""The registry's transport rule, for both ends: TLS, or plain HTTP on loopback only.

A registry token is a bearer secret, so it must never cross a network in clear:
``registry serve`` refuses plain HTTP on a non-loopback address (unless told
``--insecure-http``), and every client (``site pull``, ``registry publish/retire --url``)
refuses an ``http://`` URL to a non-loopback host and verifies an ``https://`` registry's
certificate against the CA it is given (``--ca``; default: the system's trust store).
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from semiofed.shared.errors import SemioFedError

CA_HELP = "CA certificate (PEM) the registry's TLS certificate must chain to, e.g. certs/ca.crt (default: the system's trust store)"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only ever reaches this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_client(
    url: str, ca: str | Path | None = None, timeout: float = 120.0, **kwargs: Any
) -> Any:
    """An ``httpx.Client`` on the registry at ``url``, under the transport rule above."""
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SemioFedError(f"--url {url!r}: expected https://HOST[:PORT]")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise SemioFedError(
            f"--url {url}: plain HTTP to a non-loopback host would send the token in clear; "
            "use https:// (the registry serves TLS with --certfile/--keyfile)"
        )
    verify: ssl.SSLContext | bool = True
    if ca is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise SemioFedError(f"--ca {ca}: cannot load a CA certificate ({exc})") from None
    return httpx.Client(base_url=url.rstrip("/"), verify=verify, timeout=timeout, **kwargs)
