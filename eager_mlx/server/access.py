"""Who may use the server: the API key, the web origins allowed by CORS, and the exposure warning.

Pure functions of header values; the handler calls them before any work.
"""
from __future__ import annotations

import hmac
import ipaddress
import re
from typing import Optional

from .errors import APIError

__all__ = ["check_api_key", "check_origin", "check_host", "host_names", "cors_headers", "valid_origin",
           "exposure_warning", "is_loopback"]

_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


def valid_origin(origin: str) -> bool:
    """True for '*' or a web origin such as http://localhost:3000 (scheme and host, no path)."""
    return origin == "*" or bool(_ORIGIN.fullmatch(origin))


def check_api_key(expected: Optional[str], authorization: Optional[str]) -> None:
    """Nothing when no key is set or `authorization` is ``Bearer <expected>``; else a 401 APIError."""
    if not expected:
        return
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise APIError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError(401, "Incorrect API key provided", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


def check_origin(origin: Optional[str], allowed: tuple[str, ...]) -> None:
    """A request from a web page (it has an Origin header) is refused (403) unless its origin is allowed.

    Clients outside a browser send no Origin and pass; a browser always sends it on a
    cross-site POST, so a page the user happens to open cannot drive the server.
    """
    if origin is None or "*" in allowed or origin in allowed:
        return
    raise APIError(403, f"requests from the web origin {origin!r} are not allowed (start the server with "
                        f"--cors-origin {origin} to allow them)", code="origin_not_allowed")


def cors_headers(origin: Optional[str], allowed: tuple[str, ...], preflight: bool = False) -> dict[str, str]:
    """The CORS response headers for a request from `origin` (none unless it is allowed)."""
    if origin is None or not ("*" in allowed or origin in allowed):
        return {}
    headers = {"Access-Control-Allow-Origin": "*" if "*" in allowed else origin}
    if "*" not in allowed:
        headers["Vary"] = "Origin"
    if preflight:
        headers.update({"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                        "Access-Control-Allow-Headers": "Authorization, Content-Type",
                        "Access-Control-Max-Age": "600"})
    return headers


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name, without a port) is this machine only."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(bound_host: str, allowed: tuple[str, ...]) -> Optional[tuple[str, ...]]:
    """The Host header names a server bound to `bound_host` takes: `allowed`, the bound address, and bound to
    loopback every loopback name; None (any) when `allowed` has '*', or is empty and the server is bound beyond
    loopback."""
    if "*" in allowed or (not allowed and not is_loopback(bound_host)):
        return None
    own = () if bound_host in ("", "0.0.0.0", "::") else (bound_host.strip("[]").lower(),)
    return tuple(h.lower() for h in allowed) + own + (("localhost",) if is_loopback(bound_host) else ())


def check_host(hosts: list[str], names: Optional[tuple[str, ...]]) -> None:
    """A request's Host headers (`hosts`) against `names` (see `host_names`): one at most, and a name the server
    answers to, so a web page on an attacker's name that resolves to this machine (DNS rebinding) gets a 403."""
    if len(hosts) > 1:
        raise APIError(400, "more than one Host header", code="invalid_host")
    if names is None or not hosts:  # no Host: an HTTP/1.0 client, never a browser
        return
    value = hosts[0].strip()
    host = value[1:value.find("]")] if value.startswith("[") else value.rsplit(":", 1)[0] if value.count(":") == 1 \
        else value
    host = host.rstrip(".").lower()
    if host in names or ("localhost" in names and is_loopback(host)):
        return
    raise APIError(403, f"the Host header {value[:60]!r} is not a name of this server (start it with --allow-host "
                        f"{host[:60] or 'NAME'} to allow it)", code="host_not_allowed")


def exposure_warning(bound_host: str, api_key: Optional[str]) -> Optional[str]:
    """A warning when the server listens beyond loopback (other machines can reach it), else None."""
    if is_loopback(bound_host):
        return None
    reach = "any machine that can reach this one" if bound_host in ("0.0.0.0", "::") else "other machines"
    guard = "requests need the API key" if api_key else "anyone who reaches it can use it (set --api-key)"
    return f"warning: listening on {bound_host}, reachable by {reach}: {guard}"
