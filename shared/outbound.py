"""Which URLs Lookalike may call: images fetched by URL and webhook callbacks.

Both are allow-listed by host (``LOOKALIKE_FETCH_ALLOWLIST``, ``LOOKALIKE_CALLBACK_ALLOWLIST``):
comma-separated patterns such as ``images.example.com``, ``*.cdn.example.com`` (any
subdomain) or ``hooks.example.com:8443`` (that port only; without a port, any port).

A request that would otherwise reach inside the network (server-side request forgery) is
refused twice over: the API refuses URLs whose host is not listed before anything is
queued, and the worker, right before it connects, refuses any host whose addresses are not
public (loopback, private, link-local such as cloud metadata at 169.254.169.254, ...)
unless an operator listed that host exactly, without a wildcard. Each redirect is checked
the same way.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import LookalikeError

MAX_URL_CHARS = 2048
SCHEMES = ("http", "https")


@dataclass(frozen=True)
class HostPattern:
    host: str  # lower case; "*.example.com" for subdomains
    port: int | None  # None: any port

    @property
    def is_exact(self) -> bool:
        return not self.host.startswith("*.")

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.is_exact:
            return host == self.host
        return host.endswith(self.host[1:])  # "*.example.com" -> any name ending ".example.com"


class Allowlist:
    """Host patterns from a comma-separated setting; an empty setting allows nothing."""

    def __init__(self, setting: str):
        self.patterns = [_parse_pattern(item) for item in setting.split(",") if item.strip()]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, host: str, port: int) -> HostPattern | None:
        return next((pattern for pattern in self.patterns if pattern.matches(host, port)), None)


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    pattern: HostPattern  # the allow-list entry that admitted it


def check_url(raw: object, allowlist: Allowlist, *, invalid_code: str, refused_code: str, what: str) -> Target:
    """A well-formed http(s) URL whose host the allow list admits; else ``invalid_code`` or ``refused_code``."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_URL_CHARS:
        raise LookalikeError(invalid_code, f"The {what} must be an http or https URL of at most {MAX_URL_CHARS} characters.")
    try:
        parts = urlsplit(raw)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:  # a bad port, brackets, ...
        raise LookalikeError(invalid_code, f"The {what} is not a valid URL.", {"url": raw[:200]}) from None
    if parts.scheme not in SCHEMES or not host or parts.username is not None or parts.password is not None:
        raise LookalikeError(invalid_code, f"The {what} must be an http or https URL with a host and no credentials.",
                             {"url": raw[:200]})
    port = port or (443 if parts.scheme == "https" else 80)
    pattern = allowlist.match(host, port)
    if pattern is None:
        raise LookalikeError(refused_code, f"The {what}'s host is not on this service's allow list.",
                             {"host": host[:200], "port": port})
    return Target(raw, host, port, pattern)


def check_addresses(target: Target, refused_code: str) -> None:
    """Refuse a host that resolves to a non-public address, unless the allow list names it exactly.

    Called right before connecting. (The connection resolves the name again; a DNS answer
    that changes in between is the remaining gap, narrowed by the host allow list.)
    """
    if target.pattern.is_exact:
        return
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError:
        return  # unresolvable: the connection itself fails, with a clear error
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise LookalikeError(refused_code, "The host resolves to a private or reserved address; only hosts the "
                                 "allow list names exactly may.", {"host": target.host, "address": str(address)})


def _parse_pattern(item: str) -> HostPattern:
    item = item.strip().lower()
    host, port = item, None
    if item.startswith("["):  # [::1]:8080
        host, _, rest = item[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif item.count(":") == 1:
        host, port_text = item.split(":")
        port = int(port_text)
    return HostPattern(host, port)
