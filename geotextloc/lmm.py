"""An OpenAI-compatible chat client for the project's LMM calls (ERM explanations, GeoLoc
descriptions): an on-disk answer cache, a request budget, retries with backoff.

- HTTP 429 / 5xx / timeouts are retried with exponential backoff ``backoff_s · 2**attempt``;
  a rejected request raises :class:`RequestFailed` (its text scrubbed of the key);
- every request (retries included) counts against ``budget``; when it is spent,
  :class:`BudgetExhausted` is raised and no request is made;
- answers are cached under sha256(model, messages incl. images, response format, temperature),
  so a re-run makes no request and needs no key.

The API key is read from ``OPENAI_API_KEY`` when a request is actually needed, passed to the
client and nowhere else: not stored on this object, not in the cache, not in errors or logs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from geotextloc.errors import ConfigError, OfflineError
from geotextloc.files import atomic_write_text

log = logging.getLogger(__name__)


class RequestFailed(Exception):
    """A request was rejected, or its retries (429 / 5xx / timeout) ran out."""


class BudgetExhausted(Exception):
    """The client's request budget is spent."""


def data_url(image: Path | bytes) -> str:
    """``data:image/<png|jpeg>;base64,...`` for encoded image bytes or a file."""
    raw = image if isinstance(image, bytes) else Path(image).read_bytes()
    mime = "image/png" if raw[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


class ChatClient:
    """``complete(messages) -> text`` through an OpenAI-compatible endpoint, with the cache,
    budget and retries of the module docstring."""

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str | None = None,  # default: OPENAI_BASE_URL or api.openai.com
        cache_dir: Path | str = ".cache/lmm",
        budget: int | None = 200,  # max requests (retries included) for this client
        timeout_s: float = 60.0,
        max_retries: int = 3,  # per request, on 429 / 5xx / timeout
        backoff_s: float = 2.0,
        response_format: dict | None = None,  # the API's response_format, e.g. {"type": "json_object"}
        temperature: float = 0.0,
        format_tag: str | None = None,  # what the cache key records of the format (default: the format)
    ):
        self.model, self.base_url = model, base_url or os.environ.get("OPENAI_BASE_URL")
        self.cache_dir = Path(cache_dir)
        self.budget, self.calls = budget, 0
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.response_format, self.temperature = response_format, temperature
        self.format_tag = format_tag if format_tag is not None else response_format
        self._client = None

    def __repr__(self) -> str:
        return f"ChatClient(model={self.model!r}, base_url={self.base_url!r}, calls={self.calls}, budget={self.budget})"

    # -- cache --------------------------------------------------------------------------
    def cache_key(self, messages: list[dict[str, Any]]) -> str:
        """sha256 over (model, messages with their images, response format, temperature)."""
        blob = json.dumps({"model": self.model, "messages": messages, "format": self.format_tag,
                           "temperature": self.temperature}, sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(blob.encode("ascii")).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def cached(self, key: str):
        """The cached answer under ``key``, or None (absent or unreadable: logged, ignored)."""
        path = self._cache_path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["answer"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable LMM cache file %s", path)
            return None

    def remember(self, key: str, answer) -> None:
        """Cache ``answer`` (JSON-serialisable) under ``key``, atomically."""
        text = json.dumps({"model": self.model, "answer": answer}, ensure_ascii=False, indent=1)
        atomic_write_text(self._cache_path(key), text)

    # -- HTTP ---------------------------------------------------------------------------
    def _client_or_fail(self):
        if self._client is None:
            api_key = os.environ.get("OPENAI_API_KEY")
            if not api_key:
                raise ConfigError("OPENAI_API_KEY is not set: export it, or use the offline path "
                                  "(--explainer offline / the offline describer)")
            import openai

            self._client = openai.OpenAI(api_key=api_key, base_url=self.base_url,
                                         timeout=self.timeout_s, max_retries=0)
        return self._client

    def scrub(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ***."""
        api_key = os.environ.get("OPENAI_API_KEY")
        return text.replace(api_key, "***") if api_key else text

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """One completion (not cached: see :meth:`cached`/:meth:`remember`), retried on 429 /
        5xx / timeout with delay backoff_s · 2**attempt."""
        import openai

        client = self._client_or_fail()
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.response_format is not None:
            kwargs["response_format"] = self.response_format
        for attempt in range(self.max_retries + 1):
            if self.budget is not None and self.calls >= self.budget:
                raise BudgetExhausted
            self.calls += 1
            try:
                response = client.chat.completions.create(**kwargs)
                return response.choices[0].message.content or ""
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError) as err:
                what = "timeout" if isinstance(err, openai.APITimeoutError) else f"HTTP {err.status_code}"
                if attempt == self.max_retries:
                    raise RequestFailed(f"LMM request failed after {attempt + 1} attempts ({what})") from None
                delay = self.backoff_s * 2**attempt
                log.warning("LMM request failed (%s); retry %d/%d in %.2f s", what, attempt + 1,
                            self.max_retries, delay)
                time.sleep(delay)
            except openai.APIConnectionError:
                raise OfflineError(f"cannot reach the LMM endpoint {client.base_url}; check the "
                                   "network or --base-url, or use the offline path") from None
            except openai.APIStatusError as err:
                raise RequestFailed(self.scrub(f"LMM request rejected: HTTP {err.status_code} "
                                               f"{err.message}")) from None
        raise AssertionError("unreachable")
