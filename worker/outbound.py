"""The worker's outbound HTTP: fetching images by URL and posting webhooks, both allow-listed.

Every exchange goes to the address that was checked. :mod:`shared.outbound` parses the
URL once (:func:`check_url`) and looks the name up once (:func:`resolve_addresses`); this
module then opens the socket to one of those addresses itself -- nothing here resolves a
name again -- and sends the original host in ``Host`` and, for https, in TLS SNI and the
certificate check. Redirects are followed by hand so that every hop takes the same steps.

Each exchange has one deadline, whatever the peer does: resolution, connect, TLS, request,
headers, body and (for fetches) every redirect share it. Socket timeouts alone cannot do
that -- they bound each read, so a peer sending a byte just before each would expire holds
the exchange for as long as it likes -- so a watchdog shuts the socket down when the
deadline passes, and every blocking step also gets a timeout no longer than the time left.
Downloads are streamed and cut off at the size limit.
"""

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin

import certifi

from shared.errors import LookalikeError
from shared.outbound import Allowlist, IPAddress, Target, check_url, resolve_addresses

USER_AGENT = "Lookalike/0.1 (+image similarity service)"
CHUNK_BYTES = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The CA bundle requests used before; verification and host-name checks on (the default).
_TLS = ssl.create_default_context(cafile=certifi.where())


class _Expired(Exception):
    """The exchange's deadline passed."""


class _Watchdog:
    """Shuts an exchange's socket down at its deadline, so any step blocked on the peer ends then.

    ``shutdown`` (unlike ``close``) is safe from another thread: the worker thread's blocked
    recv/send returns (EOF or an error) and it closes the socket itself.
    """

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            self._sock = None  # its owner closes it; nothing to shut down any more

    def watch(self, sock: socket.socket) -> None:
        """``sock`` is the one to shut down now (a TLS socket replaces the plain one it wraps)."""
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def left(self) -> float:
        """Seconds left, for the next blocking step's own timeout; :class:`_Expired` when none are."""
        remaining = self.deadline - time.monotonic()
        if self.fired or remaining <= 0:
            raise _Expired
        return remaining

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.deadline

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop its TLS state
                # under the feet of the thread still reading it.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:  # not connected yet, or already closed
                pass

    def release(self, sock: socket.socket) -> None:
        """Forget ``sock`` before its owner closes it, so a late timer never shuts down a reused descriptor."""
        with self._lock:
            if self._sock is sock:
                self._sock = None


@contextmanager
def _request(target: Target, addresses: list[IPAddress], watchdog: _Watchdog, method: str,
             headers: dict[str, str], body: bytes | None = None,
             ) -> Iterator[tuple[http.client.HTTPResponse, socket.socket]]:
    """Send one request to a checked address of ``target``; yields the response (headers read) and its socket."""
    # http.client speaks HTTP over the socket we open; auto_open=0 forbids it from ever
    # opening (and so resolving a name for) one of its own.
    connection = http.client.HTTPConnection(target.host, target.port)
    connection.auto_open = 0
    sock = None
    try:
        sock = connection.sock = _connect(target, addresses, watchdog)
        sock.settimeout(watchdog.left())
        connection.request(method, target.request_target, body=body, headers={
            "Host": target.host_header, "User-Agent": USER_AGENT, "Connection": "close", **headers})
        sock.settimeout(watchdog.left())
        response = connection.getresponse()
        if watchdog.fired:  # headers cut short by the watchdog parse as if complete: they are not
            raise _Expired
        yield response, sock
    finally:
        if sock is not None:
            watchdog.release(sock)  # (http.client may have dropped its own reference already)
        connection.close()


def _connect(target: Target, addresses: list[IPAddress], watchdog: _Watchdog) -> socket.socket:
    """A socket connected to the first of ``addresses`` that accepts, with TLS for https."""
    for position, address in enumerate(addresses):
        sock = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            watchdog.watch(sock)
            sock.settimeout(watchdog.left())
            sock.connect((str(address), target.port))
            break
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError) or watchdog.expired or position == len(addresses) - 1:
                raise  # else: refused or unreachable, try the next checked address
    if target.scheme == "https":
        # SNI and the certificate are checked against the URL's host, not the address.
        sock = _TLS.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
        try:
            watchdog.watch(sock)
            sock.settimeout(watchdog.left())
            sock.do_handshake()
        except BaseException:
            sock.close()
            raise
    return sock


# --- Images by URL -------------------------------------------------------------------------


def fetch_image(url: str, allowlist: Allowlist, *, max_bytes: int, timeout_seconds: float, max_redirects: int) -> bytes:
    """The bytes at ``url``, within the size and time limits; each redirect is checked again.

    Fails the task with ``url_not_allowed``, ``fetch_failed``, ``fetch_too_large`` or ``fetch_timeout``.
    """
    deadline = time.monotonic() + timeout_seconds
    for hop in range(max_redirects + 1):
        target = check_url(url, allowlist, invalid_code="url_not_allowed", refused_code="url_not_allowed",
                           what="image URL" if hop == 0 else "redirect target")
        with _Watchdog(deadline) as watchdog:
            try:
                addresses = resolve_addresses(target, "url_not_allowed", timeout=watchdog.left())
                with _request(target, addresses, watchdog, "GET", {"Accept": "image/*"}) as (response, sock):
                    location = response.getheader("Location")
                    if response.status in REDIRECT_STATUSES and location:
                        # http.client reads headers as Latin-1; a Location is UTF-8 if anything (as requests reads it)
                        url = _redirect_target(url, location)
                        continue
                    if response.status != 200:
                        raise LookalikeError("fetch_failed", f"The image URL answered HTTP {response.status}.",
                                             {"status": response.status, "url": url[:200]})
                    return _read_limited(response, sock, watchdog, max_bytes)
            except (_Expired, TimeoutError):  # TimeoutError: a socket or lookup timeout, set from the time left
                raise _timeout(timeout_seconds) from None
            except (OSError, http.client.HTTPException) as exc:
                if watchdog.expired:  # the watchdog cut it: the peer saw its socket shut down
                    raise _timeout(timeout_seconds) from None
                raise LookalikeError("fetch_failed", "The image URL could not be fetched.",
                                     {"url": url[:200], "reason": type(exc).__name__}) from None
    raise LookalikeError("fetch_failed", f"The image URL redirected more than {max_redirects} times.",
                         {"max_redirects": max_redirects})


def _read_limited(response: http.client.HTTPResponse, sock: socket.socket, watchdog: _Watchdog,
                  max_bytes: int) -> bytes:
    # Sent with Accept-Encoding: identity (http.client's default), so these are the bytes
    # of the image itself: nothing to decompress, no gzip bomb to cut off.
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    while not response.isclosed():  # http.client closes the socket once the body is complete
        sock.settimeout(watchdog.left())
        chunk = response.read(CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    if watchdog.fired:  # the end of the body was the watchdog's shutdown, not the server's
        raise _Expired
    return b"".join(chunks)


def _too_large(max_bytes: int) -> LookalikeError:
    return LookalikeError("fetch_too_large", f"The image at the URL is larger than {max_bytes} bytes.",
                          {"max_bytes": max_bytes})


def _timeout(timeout_seconds: float) -> LookalikeError:
    return LookalikeError("fetch_timeout", f"Fetching the image took longer than {timeout_seconds:g} s.",
                          {"timeout_seconds": timeout_seconds})


# --- Webhooks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One webhook attempt as the task shows it."""

    status: int | None  # HTTP status, None when no answer came
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _redirect_target(url: str, location: str) -> str:
    """The absolute URL a ``Location`` header points at, to be checked like any other; refused if unparseable."""
    try:
        # http.client reads headers as Latin-1; a Location is UTF-8 if anything (as requests reads it)
        return urljoin(url, location.encode("latin-1").decode("utf-8", "replace"))
    except ValueError:  # e.g. "http://[::1" -- urljoin's own parser gives up
        raise LookalikeError("url_not_allowed", "The redirect target is not a valid URL.",
                             {"location": location[:200]}) from None


def post_webhook(target: Target, body: bytes, headers: dict[str, str], timeout_seconds: float) -> Delivery:
    """POST ``body`` once, all within ``timeout_seconds``.

    Redirects are not followed (a receiver must answer 2xx itself); the answer's body is not read.
    """
    started = time.monotonic()
    with _Watchdog(started + timeout_seconds) as watchdog:
        try:
            addresses = resolve_addresses(target, "callback_not_allowed", timeout=watchdog.left())
            with _request(target, addresses, watchdog, "POST", {"Content-Type": "application/json", **headers},
                          body) as (response, _):
                status = response.status  # the answer's body is not read
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except LookalikeError as exc:
            status, error = None, exc.message
        except (_Expired, TimeoutError):
            status, error = None, "timeout"
        except (OSError, http.client.HTTPException) as exc:
            status, error = None, "timeout" if watchdog.expired else type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - whatever else a broken exchange raises is this attempt's failure
            status, error = None, "timeout" if watchdog.expired else type(exc).__name__
    return Delivery(status, error, round((time.monotonic() - started) * 1000, 1))
