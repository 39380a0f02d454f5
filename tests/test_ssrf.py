"""Server-side request forgery and slow peers: the worker's outbound HTTP, in process, on loopback only.

Every test here runs the real code paths -- ``check_url`` (the API's check), ``fetch_image``
and ``post_webhook`` (the worker's) -- against plain socket listeners on 127.0.0.x that
record every connection. Names are answered by a stub resolver (``socket.getaddrinfo``
replaced), so "a name resolving to 169.254.169.254" is a table entry, never a lookup; and
a guard around ``socket.connect`` refuses, and records as a failure, any connection to
anything but a loopback address, so no test can send traffic off this machine even when
the code under test is wrong.
"""

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pydantic
import pytest

import worker.outbound
from shared.errors import LookalikeError
from shared.outbound import Allowlist, check_url, is_public
from shared.settings import Settings
from worker.outbound import Delivery, fetch_image, post_webhook

IMAGE = b"\xff\xd8\xff\xe0" + b"not really a jpeg, but bytes to fetch" * 10
DEADLINE = 2.0  # seconds: the fetch and webhook limit of the deadline tests (as in tests/conftest.py)
MARGIN = 1.0  # what a busy two-core machine may add to it; the unfixed code took 8 s and more


# --- A loopback-only world -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def connects(monkeypatch) -> list[tuple]:
    """Every address the code under test connects to; anything but loopback is refused and fails the test."""
    attempts, escapes = [], []
    real_connect = socket.socket.connect

    def connect(sock, address):
        attempts.append(address[:2])
        try:
            loopback = ipaddress.ip_address(address[0]).is_loopback
        except ValueError:  # a name: connect() would resolve it itself
            loopback = False
        if not loopback:
            escapes.append(address)
            raise ConnectionRefusedError(f"test guard: {address} is not a loopback address")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert not escapes, f"the code under test tried to leave loopback: {escapes}"


class StubResolver:
    """``socket.getaddrinfo`` from a table: name -> addresses (or a function giving them); others do not resolve."""

    def __init__(self, table: dict[str, list[str] | Callable[[], list[str]]]):
        self.table = table
        self.lookups: list[str] = []
        self._real = socket.getaddrinfo

    # socket.getaddrinfo's own signature: callers pass type= by keyword (shared/outbound.py does).
    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        host = host.decode() if isinstance(host, bytes) else host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:  # a literal: no lookup at all
            return self._real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        self.lookups.append(host)
        answer = self.table.get(host)
        addresses = answer() if callable(answer) else answer
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "stub resolver: no such name")
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (address, port, 0, 0) if ":" in address else (address, port)) for address in addresses]


@pytest.fixture
def resolver(monkeypatch) -> StubResolver:
    stub = StubResolver(dict(NAMES))
    monkeypatch.setattr(socket, "getaddrinfo", stub)
    return stub


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class Listener:
    """A plain TCP server on a loopback address: counts every connection, answers each with ``respond``."""

    def __init__(self, respond: Callable[[socket.socket, Request, "Listener"], None], host: str = "127.0.0.1",
                 port: int = 0):
        self.respond = respond
        self.server = socket.create_server((host, port))
        self.host, self.port = self.server.getsockname()[:2]
        self.connections = 0
        self.requests: list[Request] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                request = read_request(conn)
                with self._lock:
                    self.requests.append(request)
                self.respond(conn, request, self)
            except OSError:  # the client gave up: its deadline, or a refused certificate
                pass

    def close(self) -> None:
        self.closed.set()
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
        except OSError:
            pass
        self.server.close()


def read_request(conn: socket.socket) -> Request:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, *_ = lines[0].split(" ") + ["", ""]
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length") or 0):
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, target, headers, body)


def http_answer(status: int = 200, body: bytes = b"", headers: dict[str, bytes | str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever".encode(), f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def answering(status: int = 200, body: bytes = b"", headers: dict | None = None):
    return lambda conn, request, listener: conn.sendall(http_answer(status, body, headers))


def by_path(routes: dict[str, bytes]):
    """Answers each request target with its prepared bytes (404 otherwise)."""
    return lambda conn, request, listener: conn.sendall(routes.get(request.target, http_answer(404, b"no such path")))


def trickling(prefix: bytes, every: float = 0.3, for_seconds: float = 8.0):
    """Sends ``prefix``, then one more byte every ``every`` seconds: never a long enough pause for a read timeout."""
    def respond(conn, request, listener):
        if prefix:
            conn.sendall(prefix)
        end = time.monotonic() + for_seconds
        while time.monotonic() < end and not listener.closed.wait(every):
            conn.sendall(b"x")  # BrokenPipe/ConnectionReset once the client has given up
    return respond


def silent(conn, request, listener):
    """Accepts the connection, reads the request and says nothing."""
    listener.closed.wait(8)


@pytest.fixture(scope="module")
def trap():
    """Where the URL tricks point: a connection here is the SSRF."""
    listener = Listener(answering(200, IMAGE, {"Content-Type": "image/jpeg"}))
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def redirector(trap):
    """The one allowed server of the trick tests: /r/<n> redirects to trick n, /img is an image."""
    routes = {"/img": http_answer(200, IMAGE)}
    listener = Listener(by_path(routes))
    for number, trick in enumerate(TRICKS):  # the Location bytes exactly as written (UTF-8 where not ASCII)
        location = trick.url.format(T=trap.port, W=listener.port).encode()
        routes[f"/r/{number}"] = http_answer(302, headers={"Location": location})
    yield listener
    listener.close()


def listed(*entries: str) -> Allowlist:
    return Allowlist(",".join(entries))


def fetch(url: str, allowlist: Allowlist, timeout: float = DEADLINE, max_redirects: int = 3) -> bytes:
    return fetch_image(url, allowlist, max_bytes=1_000_000, timeout_seconds=timeout, max_redirects=max_redirects)


def deliver(url: str, allowlist: Allowlist, timeout: float = DEADLINE) -> Delivery:
    """What worker/webhooks.py does for one attempt: check the URL again, then POST."""
    target = check_url(url, allowlist, invalid_code="callback_not_allowed", refused_code="callback_not_allowed",
                       what="callback URL")
    return post_webhook(target, b'{"task_id": "t1"}', {"X-Lookalike-Task-Id": "t1"}, timeout)


# --- The corpus --------------------------------------------------------------------------------

# The stub resolver's table; a name not in it does not resolve.
NAMES = {
    "a.cdn.example.com": ["93.184.216.34"],  # public: never reached, the guard would refuse it
    "images.example.com": ["127.0.0.1"],  # listed exactly, but resolves to loopback
    "loop.cdn.example.com": ["127.0.0.1"],
    "meta.cdn.example.com": ["169.254.169.254"],
    "ten.cdn.example.com": ["10.0.0.7"],
    "cgnat.cdn.example.com": ["100.64.0.1"],
    "zero.cdn.example.com": ["0.0.0.0"],
    "v6loop.cdn.example.com": ["::1"],
    "mapped.cdn.example.com": ["::ffff:127.0.0.1"],
    "compat.cdn.example.com": ["::7f00:1"],
    "nat64.cdn.example.com": ["64:ff9b::7f00:1"],
    "nat64meta.cdn.example.com": ["64:ff9b::a9fe:a9fe"],
    "nat64local.cdn.example.com": ["64:ff9b:1::808:808"],
    "sixtofour.cdn.example.com": ["2002:7f00:1::"],
    "teredo.cdn.example.com": ["2001:0:4136:e378:8000:63bf:80ff:fffe"],  # client 127.0.0.1
    "ula.cdn.example.com": ["fd00::7"],
    "mixed.cdn.example.com": ["93.184.216.34", "127.0.0.1"],  # one bad address is enough
}
# What the trick tests list: the docs' own wildcard, a name listed exactly, and the allowed server.
TRICK_ALLOWLIST = "*.cdn.example.com,images.example.com,127.0.0.1:{W}"


@dataclass(frozen=True)
class Trick:
    url: str  # {T}: the trap's port, {W}: the allowed server's
    static: bool  # refused by check_url alone (the API's check); else only once the name is resolved

    def __str__(self) -> str:
        return repr(self.url)


def static(*urls: str) -> list[Trick]:
    return [Trick(url, True) for url in urls]


def resolved(*urls: str) -> list[Trick]:
    return [Trick(url, False) for url in urls]


TRICKS = [
    # Backslashes: urllib3 ends the authority there, urllib.parse does not.
    *static("http://127.0.0.1\\.cdn.example.com/x", "http://127.0.0.1:{T}\\.cdn.example.com/x",
            "http://127.0.0.1:{T}\\@a.cdn.example.com/x", "http://a.cdn.example.com\\@127.0.0.1:{T}/x",
            "http:\\\\127.0.0.1:{T}\\x", "http:/\\127.0.0.1:{T}/x", "http://a.cdn.example.com/\\..\\@127.0.0.1:{T}"),
    # Userinfo, and characters that end the authority early for one parser only.
    *static("http://a.cdn.example.com@127.0.0.1:{T}/", "http://a.cdn.example.com:80@127.0.0.1:{T}/",
            "http://127.0.0.1:{T}#@a.cdn.example.com/", "http://127.0.0.1:{T}?@a.cdn.example.com",
            "http://@127.0.0.1:{W}/", "http://127.0.0.1:{T}/@a.cdn.example.com/"),
    # Percent-encoded hosts.
    *static("http://%31%32%37.0.0.1:{T}/", "http://127%2e0%2e0%2e1:{T}/", "http://loop%2ecdn.example.com/",
            "http://127.0.0.1%00.cdn.example.com/", "http://127.0.0.1%0d%0a.cdn.example.com/",
            "http://a.cdn.example.com%2f@127.0.0.1:{T}/"),
    # Unicode: full stops and digits other parsers fold to ASCII ones.
    *static("http://127\u30020\u30020\u30021:{T}/", "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{T}/",
            "http://127\uff0e0\uff0e0\uff0e1:{T}/", "http://loop\uff0ecdn.example.com/",
            "http://\u24db\u24de\u24de\u24df.cdn.example.com/", "http://127.0.0.1:{T}\u2024cdn.example.com/"),
    # IDNA labels that do not decode, or not back to themselves.
    *static("http://xn--a.cdn.example.com/", "http://xn--loop-.cdn.example.com/", "http://xn--ls8h.cdn.example.com/",
            "http://xn--.cdn.example.com/"),
    # IPv4 spelt otherwise: decimal, hex, octal, shortened, leading zeros.
    *static("http://2130706433:{T}/", "http://0x7f.1:{T}/", "http://0177.0.0.1:{T}/", "http://127.1:{T}/",
            "http://0x7f000001:{T}/", "http://127.0.1:{T}/", "http://127.0.0.01:{W}/"),
    # IPv6 forms of loopback, and zone ids.
    *static("http://[::ffff:127.0.0.1]:{T}/", "http://[::ffff:7f00:1]:{T}/", "http://[64:ff9b::7f00:1]:{T}/",
            "http://[2002:7f00:1::]:{T}/", "http://[::127.0.0.1]:{T}/", "http://[::1]:{T}/",
            "http://[::1%25lo]:{T}/", "http://[fe80::1%25eth0]:{T}/", "http://[::ffff:127.0.0.1]:{W}/",
            "http://[0:0:0:0:0:ffff:127.0.0.1]:{W}/"),
    # The unspecified address ("this host" to Linux).
    *static("http://0.0.0.0:{T}/", "http://0:{T}/", "http://[::]:{T}/"),
    # Trailing and doubled dots.
    *static("http://127.0.0.1.:{W}/", "http://loop.cdn.example.com./", "http://images.example.com../",
            "http://loop..cdn.example.com/"),
    # Whitespace and controls in the host.
    *static("http://127.0.0.1:{T} .cdn.example.com/", "http://127.0.0.1\t.cdn.example.com/",
            "http://a.cdn.example.com\r\n.127.0.0.1:{T}/", "http://127.0.0.1:{T}\x00.cdn.example.com/",
            " http://127.0.0.1:{T}/", "http://127.0.0.1:{T}/x\r\nHost: a.cdn.example.com"),
    # Ports nobody listed: an entry without one means 80/443 only.
    *static("http://a.cdn.example.com:{T}/", "http://images.example.com:{T}/", "http://127.0.0.1:{T}/",
            "http://127.0.0.1:0{W}/", "http://127.0.0.1:65536/", "http://127.0.0.1:{W}:{T}/",
            "https://images.example.com:80/"),
    # Schemes.
    *static("ftp://a.cdn.example.com/", "file:///etc/passwd", "gopher://127.0.0.1:{T}/_GET", "dict://127.0.0.1:{T}/",
            "http:127.0.0.1:{T}/", "//127.0.0.1:{T}/", "https:/127.0.0.1:{T}/", "javascript:alert(1)",
            "HTTP://127.0.0.1:{T}/", "http+unix://%2Fvar%2Frun%2Fdocker.sock/"),
    # Names the list admits, whose addresses it does not; and one that does not resolve.
    *resolved("http://loop.cdn.example.com/", "http://images.example.com/x", "https://images.example.com/x",
              "http://meta.cdn.example.com/latest/meta-data/", "http://ten.cdn.example.com/",
              "http://cgnat.cdn.example.com/", "http://zero.cdn.example.com/", "http://v6loop.cdn.example.com/",
              "http://mapped.cdn.example.com/", "http://compat.cdn.example.com/", "http://nat64.cdn.example.com/",
              "http://nat64meta.cdn.example.com/", "http://nat64local.cdn.example.com/",
              "http://sixtofour.cdn.example.com/", "http://teredo.cdn.example.com/", "http://ula.cdn.example.com/",
              "http://mixed.cdn.example.com/", "http://nowhere.cdn.example.com/",
              "http://xn--80ak6aa92e.cdn.example.com/"),
]


def test_the_corpus_is_large_enough():
    assert len(TRICKS) >= 30 and len({trick.url for trick in TRICKS}) == len(TRICKS)


@pytest.mark.parametrize("trick", TRICKS, ids=str)
def test_the_api_check_refuses_what_needs_no_lookup(trick, trap, redirector, resolver):
    url = trick.url.format(T=trap.port, W=redirector.port)
    allowlist = Allowlist(TRICK_ALLOWLIST.format(W=redirector.port))
    for codes in (("invalid_url", "url_not_allowed"), ("invalid_callback_url", "callback_not_allowed")):
        if trick.static:
            with pytest.raises(LookalikeError) as error:
                check_url(url, allowlist, invalid_code=codes[0], refused_code=codes[1], what="URL")
            assert error.value.code in codes
        else:  # admitted by name; the worker's lookup refuses it
            check_url(url, allowlist, invalid_code=codes[0], refused_code=codes[1], what="URL")
    assert resolver.lookups == []  # the API never resolves


@pytest.mark.parametrize("trick", TRICKS, ids=str)
def test_no_trick_fetches_anything(trick, trap, redirector, resolver, connects):
    url = trick.url.format(T=trap.port, W=redirector.port)
    before = trap.connections
    with pytest.raises(LookalikeError) as error:
        fetch(url, Allowlist(TRICK_ALLOWLIST.format(W=redirector.port)))
    assert error.value.code == "url_not_allowed"
    assert connects == [] and trap.connections == before  # refused before any connection


@pytest.mark.parametrize("trick", TRICKS, ids=str)
def test_no_trick_receives_a_webhook(trick, trap, redirector, resolver, connects):
    url = trick.url.format(T=trap.port, W=redirector.port)
    before = trap.connections
    try:
        delivery = deliver(url, Allowlist(TRICK_ALLOWLIST.format(W=redirector.port)))
    except LookalikeError as error:  # refused by the check (worker/webhooks.py gives up at once)
        assert trick.static and error.code == "callback_not_allowed"
    else:
        assert not trick.static and delivery.status is None and not delivery.ok and delivery.error
    assert connects == [] and trap.connections == before


@pytest.mark.parametrize("trick", [trick for trick in TRICKS if not {"\r", "\n", "\x00"} & set(trick.url)], ids=str)
def test_no_redirect_reaches_a_trick(trick, trap, redirector, resolver, connects):
    number = TRICKS.index(trick)
    before = trap.connections
    with pytest.raises(LookalikeError) as error:
        fetch(f"{redirector.base_url}/r/{number}", Allowlist(TRICK_ALLOWLIST.format(W=redirector.port)))
    # Refused; or, where a Location is only a relative path on the allowed server, a 404 there.
    assert error.value.code in ("url_not_allowed", "fetch_failed")
    assert set(connects) <= {("127.0.0.1", redirector.port)} and trap.connections == before


# --- Address policy and allow-list notation ----------------------------------------------------


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:4700::1111", True), ("::ffff:93.184.216.34", True),
    ("64:ff9b::5db8:d822", True), ("2002:5db8:d822::1", True),  # NAT64 and 6to4 of a public address
    ("127.0.0.1", False), ("10.0.0.7", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("255.255.255.255", False), ("::1", False), ("fe80::1", False),
    ("fd00::7", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.7", False), ("::7f00:1", False),
    ("64:ff9b::7f00:1", False), ("64:ff9b::a9fe:a9fe", False), ("64:ff9b:1::808:808", False),
    ("2002:7f00:1::", False), ("2002:a9fe:a9fe::", False), ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),
    ("ff02::1", False),
])
def test_addresses_are_judged_by_the_ipv4_address_they_carry(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


def test_entries_admit_their_port_only_and_networks_admit_their_addresses():
    allowlist = Allowlist("images.example.com, *.cdn.example.com:8443, 10.20.0.0/16, [fd00::/8]:9000, 127.0.0.1:8080")
    admitted = ["http://images.example.com/", "https://images.example.com/", "https://a.cdn.example.com:8443/",
                "http://10.20.3.4/", "https://10.20.3.4/", "http://[fd00::7]:9000/", "http://127.0.0.1:8080/"]
    refused = ["http://images.example.com:8080/", "https://images.example.com:80/", "https://a.cdn.example.com/",
               "http://cdn.example.com:8443/", "http://10.20.3.4:8080/", "http://10.21.0.1/",
               "http://[fd00::7]/", "http://127.0.0.1/", "http://127.0.0.2:8080/"]
    for url in admitted:
        check_url(url, allowlist, invalid_code="invalid_url", refused_code="url_not_allowed", what="URL")
    for url in refused:
        with pytest.raises(LookalikeError) as error:
            check_url(url, allowlist, invalid_code="invalid_url", refused_code="url_not_allowed", what="URL")
        assert error.value.code == "url_not_allowed", url


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "host:99999", "host:0", "*", "a..b", "[::1]x", "127.1", "*.a*.b",
                                   "h\u00f6st.example.com", "10.0.0.0/33"])
def test_a_malformed_entry_is_an_error_not_another_meaning(entry):
    with pytest.raises(ValueError, match="allow list entry"):
        Allowlist(f"images.example.com,{entry}")


def test_a_url_other_parsers_read_differently_is_refused(monkeypatch):
    from urllib3.util import parse_url

    monkeypatch.setattr("shared.outbound.urllib3_parse_url", lambda url: parse_url("http://127.0.0.1:1/"))
    with pytest.raises(LookalikeError) as error:
        check_url("http://images.example.com/", Allowlist("images.example.com"), invalid_code="invalid_url",
                  refused_code="url_not_allowed", what="URL")
    assert error.value.code == "invalid_url" and "read its host differently" in error.value.message


# --- Pinning: what was checked is what is connected to ------------------------------------------


def two_listeners_one_port(respond_a, respond_b) -> tuple[Listener, Listener]:
    """A on 127.0.0.2 and B on 127.0.0.1, on the same port."""
    for _ in range(20):
        a = Listener(respond_a, host="127.0.0.2")
        try:
            return a, Listener(respond_b, host="127.0.0.1", port=a.port)
        except OSError:  # that port is taken on 127.0.0.1: try another
            a.close()
    pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")


def rebinding(first: str, then: str) -> Callable[[], list[str]]:
    """Answers ``first`` once, then ``then``: a DNS rebinding attacker's name server."""
    answers = iter([[first]])
    return lambda: next(answers, [then])


def test_dns_rebinding_cannot_move_a_fetch_or_a_webhook(resolver, connects):
    a, b = two_listeners_one_port(answering(200, IMAGE), answering(200, b"the inside"))
    try:
        allowlist = listed(f"*.rebind.test:{a.port}", f"127.0.0.2/32:{a.port}")  # B's address is not listed
        resolver.table["img.rebind.test"] = rebinding("127.0.0.2", "127.0.0.1")
        assert fetch(f"http://img.rebind.test:{a.port}/x.jpg", allowlist) == IMAGE
        assert resolver.lookups == ["img.rebind.test"]  # looked up once, connected to what was checked
        [request] = a.requests
        assert request.target == "/x.jpg" and request.headers["host"] == f"img.rebind.test:{a.port}"

        resolver.table["hook.rebind.test"] = rebinding("127.0.0.2", "127.0.0.1")
        assert deliver(f"http://hook.rebind.test:{a.port}/hook", allowlist).status == 200
        assert len(a.requests) == 2 and a.requests[1].method == "POST"
        assert b.connections == 0 and set(connects) == {("127.0.0.2", a.port)}
    finally:
        a.close()
        b.close()


def test_each_redirect_is_looked_up_and_checked_again(resolver, connects):
    # The first hop's name points at A; by the redirect, the same name points at B.
    a, b = two_listeners_one_port(None, answering(200, b"the inside"))
    a.respond = answering(302, headers={"Location": f"http://img.rebind.test:{a.port}/again"})
    try:
        resolver.table["img.rebind.test"] = rebinding("127.0.0.2", "127.0.0.1")
        with pytest.raises(LookalikeError) as error:
            fetch(f"http://img.rebind.test:{a.port}/x.jpg", listed(f"*.rebind.test:{a.port}", f"127.0.0.2:{a.port}"))
        assert error.value.code == "url_not_allowed" and error.value.details["address"] == "127.0.0.1"
        assert len(a.requests) == 1 and b.connections == 0 and set(connects) == {("127.0.0.2", a.port)}
    finally:
        a.close()
        b.close()


# --- What is allowed still works ---------------------------------------------------------------


@pytest.fixture
def images():
    listener = Listener(by_path({
        "/img?size=1": http_answer(200, IMAGE, {"Content-Type": "image/jpeg"}),
        "/moved": http_answer(301, headers={"Location": "/img?size=1"}),
    }))
    yield listener
    listener.close()


def test_an_allowed_loopback_url_is_fetched(images, connects):
    assert fetch(f"{images.base_url}/img?size=1#fragment", listed(f"127.0.0.1:{images.port}")) == IMAGE
    [request] = images.requests
    assert (request.method, request.target) == ("GET", "/img?size=1")
    assert request.headers["host"] == f"127.0.0.1:{images.port}" and request.headers["accept-encoding"] == "identity"
    assert connects == [("127.0.0.1", images.port)]


def test_a_listed_name_with_a_listed_address_is_fetched_by_that_name(images, resolver, connects):
    resolver.table["media.internal"] = ["127.0.0.1"]
    url = f"http://media.internal:{images.port}/img?size=1"
    assert fetch(url, listed(f"media.internal:{images.port}", f"127.0.0.0/8:{images.port}")) == IMAGE
    assert images.requests[-1].headers["host"] == f"media.internal:{images.port}"
    with pytest.raises(LookalikeError) as error:  # the name alone is not enough for a loopback address
        fetch(url, listed(f"media.internal:{images.port}"))
    assert error.value.code == "url_not_allowed"
    assert connects == [("127.0.0.1", images.port)]
    # Several checked addresses: one that refuses the connection is skipped for the next.
    resolver.table["media.internal"] = ["127.0.0.3", "127.0.0.1"]
    assert fetch(url, listed(f"media.internal:{images.port}", f"127.0.0.0/8:{images.port}")) == IMAGE
    assert connects[1:] == [("127.0.0.3", images.port), ("127.0.0.1", images.port)]


def test_a_redirect_to_an_allowed_target_is_followed(images, connects):
    assert fetch(f"{images.base_url}/moved", listed(f"127.0.0.1:{images.port}")) == IMAGE
    assert [request.target for request in images.requests] == ["/moved", "/img?size=1"]
    with pytest.raises(LookalikeError) as error:
        fetch(f"{images.base_url}/moved", listed(f"127.0.0.1:{images.port}"), max_redirects=0)
    assert error.value.code == "fetch_failed" and error.value.details == {"max_redirects": 0}


def test_a_webhook_to_an_allowed_callback_is_delivered(connects):
    hooks = Listener(answering(204))
    try:
        delivery = deliver(f"{hooks.base_url}/hook?tenant=7", listed(f"127.0.0.1:{hooks.port}"))
        assert delivery.ok and delivery.status == 204 and delivery.error is None
        [request] = hooks.requests
        assert (request.method, request.target, request.body) == ("POST", "/hook?tenant=7", b'{"task_id": "t1"}')
        assert request.headers["content-type"] == "application/json" and request.headers["x-lookalike-task-id"] == "t1"
        assert request.headers["host"] == f"127.0.0.1:{hooks.port}"
        failing = Listener(answering(503))
        try:
            delivery = deliver(f"{failing.base_url}/", listed(f"127.0.0.1:{failing.port}"))
            assert (delivery.status, delivery.error, delivery.ok) == (503, "HTTP 503", False)
        finally:
            failing.close()
    finally:
        hooks.close()


def make_certificate(directory, name: str) -> tuple[str, str]:
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_goes_to_the_checked_address_with_the_names_sni_and_certificate(tmp_path, resolver, monkeypatch,
                                                                             connects):
    cert, key = make_certificate(tmp_path, "secure.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server_names = []
    server_context.sni_callback = lambda sock, name, context: server_names.append(name)

    def tls(conn, request, listener):  # answered after the handshake, in respond_tls
        raise AssertionError("unreachable")

    class TlsListener(Listener):
        def _handle(self, conn):
            try:
                with server_context.wrap_socket(conn, server_side=True) as secure:
                    secure.settimeout(10)
                    self.requests.append(read_request(secure))
                    secure.sendall(http_answer(200, IMAGE))
            except (OSError, ssl.SSLError):  # the client refused the certificate
                pass

    listener = TlsListener(tls)
    try:
        monkeypatch.setattr(worker.outbound, "_TLS", ssl.create_default_context(cafile=cert))
        resolver.table.update({"secure.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        allowlist = listed(f"secure.test:{listener.port}", f"other.test:{listener.port}", f"127.0.0.1:{listener.port}")
        assert fetch(f"https://secure.test:{listener.port}/img", allowlist) == IMAGE
        assert server_names == ["secure.test"]
        assert listener.requests[0].headers["host"] == f"secure.test:{listener.port}"
        with pytest.raises(LookalikeError) as error:  # same address, but the certificate is not other.test's
            fetch(f"https://other.test:{listener.port}/img", allowlist)
        assert error.value.code == "fetch_failed" and error.value.details["reason"] == "SSLCertVerificationError"
        assert len(listener.requests) == 1 and set(connects) == {("127.0.0.1", listener.port)}
    finally:
        listener.close()


# --- One deadline for the whole exchange ------------------------------------------------------

SLOW_PEERS = {
    "body trickled": trickling(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"),
    "headers trickled": trickling(b"HTTP/1.1 200 OK\r\nX-Slow: "),
    "silent": silent,
}


@pytest.mark.parametrize("peer", SLOW_PEERS)
def test_a_slow_image_server_is_cut_off_at_the_deadline(peer):
    listener = Listener(SLOW_PEERS[peer])
    try:
        started = time.monotonic()
        with pytest.raises(LookalikeError) as error:
            fetch(f"{listener.base_url}/img", listed(f"127.0.0.1:{listener.port}"), timeout=DEADLINE)
        took = time.monotonic() - started
        assert error.value.code == "fetch_timeout"
        assert DEADLINE - 0.05 <= took <= DEADLINE + MARGIN, took
    finally:
        listener.close()


@pytest.mark.parametrize("peer", ["headers trickled", "silent"])
def test_a_slow_webhook_receiver_is_cut_off_at_the_deadline(peer):
    listener = Listener(SLOW_PEERS[peer])
    try:
        started = time.monotonic()
        delivery = deliver(f"{listener.base_url}/hook", listed(f"127.0.0.1:{listener.port}"), timeout=DEADLINE)
        took = time.monotonic() - started
        assert delivery.status is None and delivery.error == "timeout"
        assert DEADLINE - 0.05 <= took <= DEADLINE + MARGIN and delivery.duration_ms <= (DEADLINE + MARGIN) * 1000
    finally:
        listener.close()


def test_redirects_and_lookups_spend_the_same_deadline(resolver):
    first_hop = 1.2  # under the deadline by itself; the next hop gets what is left
    listener = Listener(None)

    def respond(conn, request, listener):
        if request.target == "/slow-redirect":
            time.sleep(first_hop)
            conn.sendall(http_answer(302, headers={"Location": "/silent"}))
        else:
            silent(conn, request, listener)

    listener.respond = respond
    try:
        started = time.monotonic()
        with pytest.raises(LookalikeError) as error:
            fetch(f"{listener.base_url}/slow-redirect", listed(f"127.0.0.1:{listener.port}"), timeout=DEADLINE)
        assert error.value.code == "fetch_timeout" and time.monotonic() - started <= DEADLINE + MARGIN

        def slow_lookup() -> list[str]:
            time.sleep(DEADLINE + 1)  # a resolver that hangs; getaddrinfo cannot be interrupted
            return ["127.0.0.1"]

        resolver.table["slow.test"] = slow_lookup
        started = time.monotonic()
        with pytest.raises(LookalikeError) as error:
            fetch(f"http://slow.test:{listener.port}/img", listed(f"slow.test:{listener.port}",
                                                                 f"127.0.0.1:{listener.port}"), timeout=DEADLINE)
        assert error.value.code == "fetch_timeout" and time.monotonic() - started <= DEADLINE + MARGIN
    finally:
        listener.close()


@pytest.mark.parametrize("setting", ["fetch_allowlist", "callback_allowlist"])
def test_a_malformed_allow_list_is_refused_when_settings_are_read(setting):
    with pytest.raises(pydantic.ValidationError, match="allow list entry"):
        Settings(**{setting: "images.example.com, http://x y"})
    assert getattr(Settings(**{setting: "images.example.com,10.0.0.0/8:8080"}), setting)
