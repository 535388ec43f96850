"""Polite HTTP for images: a shared rate limit, bounded retries, verified bodies, no key in any message.

:class:`Fetcher` is what :mod:`geotextloc.data.materialize` asks for every image or map tile:

* **Rate limit.** One :class:`RateLimiter` for all worker threads: requests start at least
  ``1 / rate`` seconds apart (a token bucket holding one token, so there are no bursts).
* **Retries.** HTTP 408/429/5xx, time-outs, refused or dropped connections, truncated bodies
  and bodies that are not an image are retried at most ``max_attempts`` times in all, after
  ``min(max_backoff, backoff * 2**(n-1))`` seconds times a random factor in [0.5, 1] (the
  jitter keeps threads from retrying in step). A ``Retry-After`` header (seconds or an HTTP
  date) replaces that delay and pauses *every* thread, as the server asked; a server asking
  for more than ``max_retry_after`` seconds fails the request instead. Other 4xx are not
  retried; 401/403 (a key problem) stop the whole run: every further request would fail too.
* **Verified.** A body counts only if PIL decodes it completely (an HTML error page, zero
  bytes or a cut-off JPEG/PNG is retried, then reported).
* **Secrets.** Keys are given to :class:`Redactor`, and every message this module raises or
  returns passes through it: a key never reaches a log line, progress bar, manifest or error.
"""

from __future__ import annotations

import email.utils
import json
import http.client
import io
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from PIL import Image

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  # and every other 5xx
AUTH_STATUS = frozenset({401, 403})
MAX_BODY = 64 << 20  # bytes; larger bodies are refused (no image of a place is that big)
_GENERIC_AGENTS = re.compile(r"^\s*(mozilla|python-urllib|python-requests|curl|wget|java|go-http-client|okhttp)\b",
                             re.IGNORECASE)
_KEY_PARAMS = re.compile(r"([?&](?:key|api_key|apikey|access_token|token|signature)=)[^&#\s]*", re.IGNORECASE)


class FetchError(Exception):
    """A request that failed for good; ``str()`` is one redacted line. ``stop_all``: 401/403,
    every other request with the same key would fail the same way."""

    def __init__(self, message: str, stop_all: bool = False):
        super().__init__(message)
        self.stop_all = stop_all


class Redactor:
    """Replaces each secret (as given and URL-encoded) and every ``key=``-like query value by ``***``."""

    def __init__(self, secrets=()):
        values = {s for s in secrets if s}
        values |= {urllib.parse.quote(s, safe="") for s in values} | {urllib.parse.quote_plus(s) for s in values}
        self.secrets = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _KEY_PARAMS.sub(r"\1***", str(text))
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def check_user_agent(user_agent: str) -> str | None:
    """Why ``user_agent`` does not identify the application (tile policies require it), or None."""
    if not user_agent or not user_agent.strip():
        return "the User-Agent is empty"
    if _GENERIC_AGENTS.match(user_agent):
        return f"the User-Agent {user_agent!r} is a browser's or an HTTP library's, not this application's"
    return None


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete image, or None; decodes every pixel with PIL."""
    if not data:
        return "empty body"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            fmt = image.format
    except Exception:  # PIL raises many types for broken data
        head = data[:64].lstrip().lower()
        if head.startswith((b"<", b"{")):
            return "an HTML/JSON page, not an image"
        return "not a complete image"
    if fmt == "JPEG" and b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    return None


def json_problem(data: bytes) -> str | None:
    """Why ``data`` is not a JSON object (an API's answer), or None."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not a JSON document"
    return None if isinstance(doc, dict) else "not a JSON object"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (it may be a delay or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RateLimiter:
    """At most ``rate`` request starts per second over all threads; :meth:`pause` holds them all."""

    def __init__(self, rate: float):
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            if stop is None:
                time.sleep(start - now)
            else:
                stop.wait(start - now)

    def pause(self, seconds: float) -> None:
        """No request starts for ``seconds`` from now (a server's ``Retry-After``)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


@dataclass(frozen=True)
class Politeness:
    """How hard to push a server: the defaults suit a paid API and a small tile server alike."""

    rate: float = 5.0  # request starts per second, all threads together
    concurrency: int = 4  # worker threads
    timeout: float = 30.0  # seconds per request (connect, and between bytes received)
    max_attempts: int = 5  # per request, the first included
    backoff: float = 1.0  # seconds before the first retry (doubled each time, jittered)
    max_backoff: float = 60.0
    max_retry_after: float = 600.0  # a longer Retry-After fails the request
    user_agent: str = ""


class Fetcher:
    """GET images with rate limit, retries and verification, shared by worker threads."""

    def __init__(self, politeness: Politeness, redact: Redactor, stop: threading.Event | None = None):
        why = check_user_agent(politeness.user_agent)
        if why:
            raise ValueError(why)
        self.p, self.redact = politeness, redact
        self.stop = stop or threading.Event()
        self.limiter = RateLimiter(politeness.rate)
        self.opener = urllib.request.build_opener()
        self._count_lock = threading.Lock()
        self.requests = 0  # HTTP requests sent (retries included)

    def get_image(self, url: str) -> bytes:
        """The verified image body at ``url``; raises :class:`FetchError` (redacted) once retries are spent."""
        return self.get(url, image_problem, "image/*")

    def get_json(self, url: str):
        """The JSON document at ``url`` (e.g. Street View metadata), parsed; retried like an image."""
        return json.loads(self.get(url, json_problem, "application/json"))

    def get(self, url: str, problem=image_problem, accept: str = "image/*") -> bytes:
        """The body at ``url`` once ``problem(body)`` finds nothing wrong with it; retries, rate
        limit and errors as the module docstring says."""
        last = "no attempt made"
        for attempt in range(1, self.p.max_attempts + 1):
            if self.stop.is_set():
                raise FetchError("not attempted: the run was stopped")
            self.limiter.acquire(self.stop)
            with self._count_lock:
                self.requests += 1
            try:
                data = self._get(url, accept)
                why = problem(data)
                if why is None:
                    return data
                last, wait = f"{why} ({len(data)} bytes)", None
            except urllib.error.HTTPError as err:
                status, wait = err.code, retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
                err.close()
                last = f"HTTP {status} {self.redact(err.reason or '')}".rstrip()
                if status in AUTH_STATUS:
                    self.stop.set()
                    raise FetchError(f"{last}: the server refused the key or the request; check the key and "
                                     "that the API is enabled for it", stop_all=True) from None
                if status not in RETRY_STATUS and status < 500:
                    raise FetchError(last) from None
                if wait is not None:
                    if wait > self.p.max_retry_after:
                        raise FetchError(f"{last}: the server asks to wait {wait:.0f} s (Retry-After), more than "
                                         f"--max-retry-after {self.p.max_retry_after:g}; try again later") from None
                    self.limiter.pause(wait)
            except (TimeoutError, socket.timeout):
                last, wait = f"no answer within {self.p.timeout:g} s", None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", None) or err
                last, wait = f"connection failed ({self.redact(type(reason).__name__)}: {self.redact(reason)})", None
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"no answer within {self.p.timeout:g} s"
            if attempt == self.p.max_attempts:
                break
            if wait is None:
                wait = min(self.p.max_backoff, self.p.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            self.stop.wait(wait)
        raise FetchError(f"{last}, after {self.p.max_attempts} attempt(s)")

    def _get(self, url: str, accept: str = "image/*") -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": self.p.user_agent, "Accept": accept})
        with self.opener.open(request, timeout=self.p.timeout) as response:
            data = response.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise FetchError(f"body larger than {MAX_BODY >> 20} MiB; not an image of a place")
        return data
