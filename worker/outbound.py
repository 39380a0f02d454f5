"""The worker's outbound HTTP: fetching images by URL and posting webhooks, both allow-listed.

Redirects are followed by hand so that every hop passes the allow list and the address
check of :mod:`shared.outbound`; downloads are streamed and cut off at the size limit.
"""

import time
from dataclasses import dataclass
from urllib.parse import urljoin

import requests

from shared.errors import LookalikeError
from shared.outbound import Allowlist, Target, check_addresses, check_url

USER_AGENT = "Lookalike/0.1 (+image similarity service)"
CHUNK_BYTES = 64 * 1024


def fetch_image(url: str, allowlist: Allowlist, *, max_bytes: int, timeout_seconds: float, max_redirects: int) -> bytes:
    """The bytes at ``url``, within the size and time limits; each redirect is checked again.

    Fails the task with ``url_not_allowed``, ``fetch_failed``, ``fetch_too_large`` or ``fetch_timeout``.
    """
    deadline = time.monotonic() + timeout_seconds
    for hop in range(max_redirects + 1):
        target = check_url(url, allowlist, invalid_code="url_not_allowed", refused_code="url_not_allowed",
                           what="image URL" if hop == 0 else "redirect target")
        check_addresses(target, "url_not_allowed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(timeout_seconds)
        try:
            with requests.get(url, stream=True, allow_redirects=False, timeout=(remaining, remaining),
                              headers={"User-Agent": USER_AGENT}) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code != 200:
                    raise LookalikeError("fetch_failed", f"The image URL answered HTTP {response.status_code}.",
                                         {"status": response.status_code, "url": url[:200]})
                return _read_limited(response, max_bytes, deadline, timeout_seconds)
        except requests.Timeout:
            raise _timeout(timeout_seconds) from None
        except requests.RequestException as exc:
            raise LookalikeError("fetch_failed", "The image URL could not be fetched.",
                                 {"url": url[:200], "reason": type(exc).__name__}) from None
    raise LookalikeError("fetch_failed", f"The image URL redirected more than {max_redirects} times.",
                         {"max_redirects": max_redirects})


def _read_limited(response: requests.Response, max_bytes: int, deadline: float, timeout_seconds: float) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    for chunk in response.iter_content(CHUNK_BYTES):  # decompressed: a gzip bomb is cut off too
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if time.monotonic() > deadline:
            raise _timeout(timeout_seconds)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> LookalikeError:
    return LookalikeError("fetch_too_large", f"The image at the URL is larger than {max_bytes} bytes.",
                          {"max_bytes": max_bytes})


def _timeout(timeout_seconds: float) -> LookalikeError:
    return LookalikeError("fetch_timeout", f"Fetching the image took longer than {timeout_seconds:g} s.",
                          {"timeout_seconds": timeout_seconds})


@dataclass(frozen=True)
class Delivery:
    """One webhook attempt as the task shows it."""

    status: int | None  # HTTP status, None when no answer came
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post_webhook(target: Target, body: bytes, headers: dict[str, str], timeout_seconds: float) -> Delivery:
    """POST ``body`` once; redirects are not followed (a receiver must answer 2xx itself)."""
    started = time.monotonic()
    try:
        check_addresses(target, "callback_not_allowed")
        response = requests.post(target.url, data=body, allow_redirects=False, timeout=timeout_seconds,
                                 headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        response.close()
        status, error = response.status_code, None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    except LookalikeError as exc:
        status, error = None, exc.message
    except requests.RequestException as exc:
        status, error = None, type(exc).__name__
    return Delivery(status, error, round((time.monotonic() - started) * 1000, 1))
