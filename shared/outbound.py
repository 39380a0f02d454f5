"""Which URLs Lookalike may call: images fetched by URL and webhook callbacks.

Both are allow-listed (``LOOKALIKE_FETCH_ALLOWLIST``, ``LOOKALIKE_CALLBACK_ALLOWLIST``):
comma-separated entries, each a host name (``images.example.com``), a wildcard for its
subdomains (``*.cdn.example.com``), an address (``127.0.0.1``, ``[::1]``) or a network
(``10.20.0.0/16``, ``[fd00::/8]``), optionally with a port (``hooks.example.com:8443``,
``[::1]:9000``). An entry without a port admits only the scheme's default port (80 for
http, 443 for https); an entry with one admits only that port.

A request that would otherwise reach inside the network (server-side request forgery) is
refused twice over. The API refuses URLs that do not parse strictly or that no entry
admits, before anything is queued (:func:`check_url`). Right before it connects, the
worker resolves the name once (:func:`resolve_addresses`) and refuses it unless every
address is globally routable -- judged by the IPv4 address that mapped, NAT64, 6to4 and
Teredo forms embed -- or is itself on the list as an address or network; a name that does
not resolve is refused too. The worker then connects to exactly those addresses (never
looking the name up again), so a DNS answer that changes in between cannot move it.

One parser decides both what is checked and what is connected to: :func:`check_url`
produces the host, port and request target the worker uses, and refuses any URL that
``urllib.parse`` or urllib3 would read differently (a backslash, whitespace, userinfo,
percent-encoded or non-ASCII hosts, numeric IPv4 shorthands, ...).
"""

import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import idna
from urllib3.util import parse_url as urllib3_parse_url

from shared.errors import LookalikeError

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# scheme://authority path ?query #fragment -- the authority ends at the first "/", "?" or
# "#", as RFC 3986 says; characters that parsers disagree about (backslash, whitespace,
# controls) never get this far.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)"
                  r"(?:\?(?P<query>[^#]*))?(?:#.*)?\Z", re.DOTALL)
# [IPv6] or a name / dotted-quad IPv4, then an optional port: 1-65535 without leading zeros.
_AUTHORITY = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[1-9][0-9]{0,4}))?\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# A last label like this makes the host an IPv4 address to some parsers (127.1, 0x7f.1, 2130706433).
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
# Printable ASCII but the backslash: anything else outside the path and query is refused.
_PLAIN = re.compile(r"[\x21-\x5b\x5d-\x7e]*\Z")


class _Invalid(ValueError):
    """A URL that does not parse strictly; the message says why."""


# --- Allow lists ---------------------------------------------------------------------------


def _admits_port(entry_port: int | None, scheme: str, port: int) -> bool:
    return port == (entry_port if entry_port is not None else DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class HostPattern:
    """A host-name entry: exact, or ``*.example.com`` for any subdomain of example.com."""

    host: str  # lower case, ASCII (IDNA)
    port: int | None  # None: the scheme's default port only

    @property
    def is_exact(self) -> bool:
        return not self.host.startswith("*.")

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if not _admits_port(self.port, scheme, port):
            return False
        if self.is_exact:
            return host == self.host
        return host.endswith(self.host[1:])  # "*.example.com" -> any name ending ".example.com"


@dataclass(frozen=True)
class NetworkPattern:
    """An address or network entry: ``127.0.0.1:8080``, ``10.20.0.0/16``, ``[::1]:9000``."""

    network: IPNetwork
    port: int | None  # None: the scheme's default port only

    def admits(self, scheme: str, address: IPAddress, port: int) -> bool:
        return _admits_port(self.port, scheme, port) and address in self.network


class Allowlist:
    """Entries from a comma-separated setting; an empty setting allows nothing.

    A malformed entry raises ``ValueError`` naming it: an allow list that means something
    other than what its operator wrote is worse than one that fails loudly.
    """

    def __init__(self, setting: str):
        entries = [_parse_entry(item) for item in setting.split(",") if item.strip()]
        self.names = [entry for entry in entries if isinstance(entry, HostPattern)]
        self.networks = [entry for entry in entries if isinstance(entry, NetworkPattern)]

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def match(self, scheme: str, host: str, port: int) -> HostPattern | NetworkPattern | None:
        """The entry admitting this URL host: an IP literal by a network entry, a name by a name entry."""
        address = _ip_literal(host)
        if address is not None:
            return self.listing(scheme, address, port)
        return next((entry for entry in self.names if entry.matches(scheme, host, port)), None)

    def listing(self, scheme: str, address: IPAddress, port: int) -> NetworkPattern | None:
        """The address/network entry that lists ``address`` (on this port), if any."""
        return next((entry for entry in self.networks if entry.admits(scheme, address, port)), None)


def _parse_entry(item: str) -> HostPattern | NetworkPattern:
    text = item.strip().lower()
    host, port_text = text, None
    if text.startswith("["):  # [::1], [::1]:9000, [fd00::/8]:443
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"allow list entry {item.strip()!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:  # name:port, 10.0.0.0/8:8080
        host, port_text = text.split(":")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"allow list entry {item.strip()!r}: the port must be 1-65535")
        port = int(port_text)
    try:
        return NetworkPattern(ipaddress.ip_network(host), port)  # strict: 10.0.0.1/8 is refused as ambiguous
    except ValueError:
        if ":" in host or "/" in host:
            raise ValueError(f"allow list entry {item.strip()!r}: not an address or network") from None
    name = host[2:] if host.startswith("*.") else host
    try:
        _check_name(name)
    except _Invalid as exc:
        raise ValueError(f"allow list entry {item.strip()!r}: {exc}") from None
    return HostPattern(host, port)


# --- URLs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A URL as the strict parser read it: what is checked is what the worker connects to."""

    url: str  # as given (what redirects are resolved against)
    scheme: str  # "http" or "https"
    host: str  # lower-case ASCII name, or an IP address without brackets
    port: int  # explicit or the scheme's default
    request_target: str  # path and query, sent as they are; the fragment is dropped
    pattern: HostPattern | NetworkPattern  # the allow-list entry that admitted it
    allowlist: "Allowlist" = field(compare=False, repr=False)  # whose address entries the worker consults

    @property
    def address(self) -> IPAddress | None:
        """The host when it is an IP literal."""
        return _ip_literal(self.host)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def check_url(raw: object, allowlist: Allowlist, *, invalid_code: str, refused_code: str, what: str) -> Target:
    """A strictly parsed http(s) URL that the allow list admits; else ``invalid_code`` or ``refused_code``.

    Needs no DNS: whether the name's addresses may be reached is :func:`resolve_addresses`'s question.
    """
    if not isinstance(raw, str) or not raw or len(raw) > MAX_URL_CHARS:
        raise LookalikeError(invalid_code,
                             f"The {what} must be an http or https URL of at most {MAX_URL_CHARS} characters.")
    try:
        scheme, host, port, request_target = _parse(raw)
    except _Invalid as exc:
        raise LookalikeError(invalid_code, f"The {what} is not a valid http or https URL: {exc}.",
                             {"url": raw[:200]}) from None
    pattern = allowlist.match(scheme, host, port)
    if pattern is None:
        raise LookalikeError(refused_code, f"The {what}'s host and port are not on this service's allow list.",
                             {"host": host[:200], "port": port})
    return Target(raw, scheme, host, port, request_target, pattern, allowlist)


def _parse(raw: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an absolute http(s) URL, or :class:`_Invalid`."""
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in raw):
        raise _Invalid("it contains whitespace or control characters")
    if "\\" in raw:  # WHATWG parsers (and urllib3) read "\" as "/", RFC 3986 ones as data
        raise _Invalid("it contains a backslash")
    match = _URL.match(raw)
    if match is None:
        raise _Invalid("expected scheme://host/path")
    scheme, authority = match["scheme"].lower(), match["authority"]
    if scheme not in DEFAULT_PORTS:
        raise _Invalid("the scheme must be http or https")
    if "@" in authority:
        raise _Invalid("credentials (user@host) are not accepted")
    if "%" in authority:
        raise _Invalid("the host must not be percent-encoded")
    if not _PLAIN.match(authority):
        raise _Invalid("the host must be ASCII (IDNA-encode international names)")
    parts = _AUTHORITY.match(authority.lower())
    if parts is None:
        raise _Invalid("the host or port is malformed")
    if parts["ipv6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(parts["ipv6"]))
        except ValueError:
            raise _Invalid("the IPv6 address is malformed") from None
    else:
        host = _check_name(parts["name"])
    port = int(parts["port"]) if parts["port"] else DEFAULT_PORTS[scheme]
    if port > 65535:
        raise _Invalid("the port must be 1-65535")
    # Non-ASCII in the path or query is sent percent-encoded (as UTF-8), as browsers do;
    # everything else is sent exactly as given.
    path = quote(match["path"] or "/", safe=_ASCII)
    request_target = path if match["query"] is None else f"{path}?{quote(match['query'], safe=_ASCII)}"
    _cross_check(raw, scheme, host, port)
    return scheme, host, port, request_target


_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def _check_name(name: str) -> str:
    """A host name or dotted-quad IPv4 address, as written; refuses what parsers disagree about."""
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):  # looks like an IPv4 address: only the plain dotted quad
        try:
            return str(ipaddress.IPv4Address(name))  # refuses 127.1, 0x7f.1, 0177.0.0.1, 2130706433
        except ValueError:
            raise _Invalid("an IPv4 address must be four decimal numbers without leading zeros") from None
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):  # also "a..b", "a." and ".a"
        raise _Invalid("the host name is malformed (letters, digits, hyphens and single dots)")
    for label in labels:
        if label.startswith("xn--"):  # an IDNA name: only one that decodes and encodes back the same
            try:
                clean = idna.encode(idna.decode(label)) == label.encode()
            except (idna.IDNAError, UnicodeError):
                clean = False
            if not clean:
                raise _Invalid(f"the label {label!r} is not valid IDNA")
    return name


def _cross_check(raw: str, scheme: str, host: str, port: int) -> None:
    """Refuse a URL that urllib.parse or urllib3 read differently: a disagreement is an attack or a bug."""
    try:
        theirs = urlsplit(raw)
        other = urllib3_parse_url(raw)
        readings = [(theirs.scheme.lower(), theirs.hostname or "", theirs.port),
                    (other.scheme or "", (other.host or "").strip("[]"), other.port)]
    except ValueError:
        raise _Invalid("it is ambiguous") from None
    for their_scheme, their_host, their_port in readings:
        their_host = their_host.lower()
        if ":" in their_host:  # IPv6: compare the addresses, however written
            their_host = str(_ip_literal(their_host) or their_host)
        if (their_scheme, their_host, their_port or DEFAULT_PORTS.get(their_scheme)) != (scheme, host, port):
            raise _Invalid("it is ambiguous (URL parsers read its host differently)")


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# --- Addresses -----------------------------------------------------------------------------

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are the IPv4 address
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a network's own translator
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


def is_public(address: IPAddress) -> bool:
    """Globally routable, judging an IPv6 address that carries an IPv4 one by that IPv4 address too.

    ``ipaddress`` counts ``64:ff9b::7f00:1`` (NAT64 of 127.0.0.1), ``2002:7f00:1::`` (6to4)
    and ``::7f00:1`` as global; a translator or tunnel would deliver them to the IPv4 address
    inside, so that is what decides.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return False
        translated = address.ipv4_mapped
        if translated is None and (address in _NAT64 or address in _IPV4_COMPATIBLE):
            translated = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if translated is not None:  # this IPv6 address *is* that IPv4 address
            return _routable(translated)
        tunnelled = [address.sixtofour, *(address.teredo or ())]
        if not all(_routable(inner) for inner in tunnelled if inner is not None):
            return False
    return _routable(address)


def _routable(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast and not address.is_reserved


# Name lookups run here so that a slow resolver cannot hold a fetch past its deadline
# (getaddrinfo itself cannot be interrupted); the thread is only created on first use.
_LOOKUPS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="outbound-dns")  # a worker's threads


def resolve_addresses(target: Target, refused_code: str, *, timeout: float) -> list[IPAddress]:
    """The addresses to connect to: the name looked up once, every address admitted, before any connection.

    Each address must be public (:func:`is_public`) or listed as an address or network entry
    for this port; a name that does not resolve is refused. Raises ``TimeoutError`` when the
    lookup takes longer than ``timeout``. The caller must connect to these addresses and
    never look the name up again: that is what keeps DNS rebinding out.
    """
    if target.address is not None:
        addresses = [target.address]
    else:
        lookup = _LOOKUPS.submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM)
        try:
            infos = lookup.result(timeout=max(timeout, 0.0))
        except TimeoutError:  # (an OSError too:) the caller's deadline, not an answer
            raise
        except (OSError, UnicodeError):
            raise LookalikeError(refused_code, "The host name does not resolve.", {"host": target.host}) from None
        # (sockaddr[0] is the address, a str for AF_INET and AF_INET6; a scope id may follow a "%")
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        if not addresses:
            raise LookalikeError(refused_code, "The host name does not resolve.", {"host": target.host})
    for address in addresses:
        if not is_public(address) and target.allowlist.listing(target.scheme, address, target.port) is None:
            raise LookalikeError(refused_code, "The host resolves to a private or reserved address that the allow "
                                 "list does not name (as an address or network).",
                                 {"host": target.host, "address": str(address)})
    return addresses
