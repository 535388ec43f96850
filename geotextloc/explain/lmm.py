"""LMM explanation of a top-k result through the OpenAI chat-completions API (ERM, part b).

One request per query carries the chain of CrossText2Loc's ERM: the model is asked for
(1) key cues of the description, (2) a comparison of the k candidates, each sent as its tile
and its relevance heatmap (base64 data-URL images), and (3) per candidate a rationale and a
confidence in [0, 1] — as JSON following :data:`~geotextloc.explain.schema.LMM_OUTPUT_SCHEMA`.

Robustness, so that a report can be re-executed and never crashes:

- answers that do not fit the schema are sent back with the problem, up to ``schema_retries``
  times, then reported as ``status="error"``;
- HTTP 429 / 5xx / timeouts are retried with exponential backoff ``backoff_s · 2**attempt``;
- every request counts against ``budget``; when it is spent the result says
  ``status="budget_exhausted"`` and no request is made;
- valid answers are cached on disk under sha256(model, messages incl. images, format,
  temperature), so a re-run makes no request and needs no key.

The API key is read from ``OPENAI_API_KEY`` when a request is actually needed, passed to the
client and nowhere else: not stored on this object, not in the cache, not in results or logs
(error texts are scrubbed of it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from geotextloc.errors import ConfigError, OfflineError
from geotextloc.files import atomic_write_text
from geotextloc.explain import schema
from geotextloc.explain.schema import BUDGET_EXHAUSTED, ERROR, Candidate, Explanation

log = logging.getLogger(__name__)

SYSTEM_PROMPT = """You help a person find where they are. They described their surroundings \
in words; a retrieval model returned candidate map tiles (north-up, the described place at the \
tile centre), each shown with a relevance heatmap (hot = where the model looked). Work in three steps:
1. Key-cue analysis: list the cues of the description (shop and street names, categories of \
places, road features, overall environment) and the direction each is in relative to the \
person (left, right, front, back) when the text says so.
2. Comparative reasoning: compare the candidates against those cues: which names, categories \
and layouts does each tile show, which are missing, which candidate fits best and why. The \
heading of the person is unknown, so directions can only be checked relative to each other.
3. For every candidate give a short rationale and a confidence in [0, 1] that it is the \
described place; base it on the cues you could actually see.
Answer with JSON only, exactly of this form:
{"cues": [{"text": str, "kind": "name|category|direction|road|environment", \
"direction": "left|right|front|back|null"}], "comparison": str, "candidates": \
[{"candidate": <1..k>, "rationale": str, "confidence": <0..1>, "evidence": [str]}]}"""


class _RequestFailed(Exception):
    """A request was rejected, or its retries (429 / 5xx / timeout) ran out."""


class _BudgetExhausted(Exception):
    pass


def data_url(image: Path | bytes) -> str:
    """``data:image/<png|jpeg>;base64,...`` for encoded image bytes or a file."""
    raw = image if isinstance(image, bytes) else Path(image).read_bytes()
    mime = "image/png" if raw[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def build_messages(query: str, candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    """The chat messages: the chain instructions, the description, then per candidate its
    tile and (if given) its heatmap overlaid on the tile."""
    from geotextloc import viz

    content: list[dict[str, Any]] = [{"type": "text", "text": f"Description:\n{query}"}]
    for i, cand in enumerate(candidates, start=1):
        content.append(
            {"type": "text", "text": f"Candidate {i} (similarity {cand.score:.4f}): tile"}
        )
        content.append({"type": "image_url", "image_url": {"url": data_url(cand.image)}})
        if cand.heatmap is not None:
            overlay = viz.png_bytes(viz.overlay_heatmap(cand.image, cand.heatmap))
            content.append({"type": "text", "text": f"Candidate {i}: relevance heatmap"})
            content.append({"type": "image_url", "image_url": {"url": data_url(overlay)}})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def _strip_fences(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


class LMMExplainer:
    """``explain(query, candidates) -> Explanation`` through an OpenAI-compatible endpoint."""

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str | None = None,  # default: OPENAI_BASE_URL or api.openai.com
        cache_dir: Path | str = ".cache/lmm",
        budget: int | None = 200,  # max requests (retries included) for this explainer
        timeout_s: float = 60.0,
        max_retries: int = 3,  # per request, on 429 / 5xx / timeout
        backoff_s: float = 2.0,
        schema_retries: int = 2,  # re-asks after an answer that does not fit the schema
        response_format: str | None = "json_schema",  # or "json_object" or None
        temperature: float = 0.0,
    ):
        self.model, self.base_url = model, base_url or os.environ.get("OPENAI_BASE_URL")
        self.cache_dir = Path(cache_dir)
        self.budget, self.calls = budget, 0
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.schema_retries, self.response_format = schema_retries, response_format
        self.temperature = temperature
        self._client = None

    def __repr__(self) -> str:
        return (f"LMMExplainer(model={self.model!r}, base_url={self.base_url!r}, "
                f"calls={self.calls}, budget={self.budget})")

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    # -- public -------------------------------------------------------------------------
    def explain(self, query: str, candidates: Sequence[Candidate]) -> Explanation:
        names = [c.name for c in candidates]
        messages = build_messages(query, candidates)
        key = self.cache_key(messages)
        cached = self._cache_read(key)
        if cached is not None:
            try:
                cues, comparison, expl = schema.parse_lmm_output(cached, names)
                return Explanation(query, self.name, cues=cues, comparison=comparison,
                                   candidates=expl, cached=True)
            except ValueError:
                log.warning("ignoring LMM cache entry %s: it does not fit the schema", key)
        result = Explanation(query, self.name, status=ERROR)
        problem = ""
        for attempt in range(self.schema_retries + 1):
            try:
                content = self._request(messages)
            except _BudgetExhausted:
                result.status = BUDGET_EXHAUSTED
                result.error = (f"LMM call budget of {self.budget} requests is spent; "
                                "raise the budget or use the offline explainer")
                return result
            except _RequestFailed as err:
                result.error = str(err)
                return result
            try:
                answer = json.loads(_strip_fences(content or ""))
                cues, comparison, expl = schema.parse_lmm_output(answer, names)
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                problem = str(err)
                log.warning("LMM answer does not fit the schema (%s); attempt %d/%d",
                            problem, attempt + 1, self.schema_retries + 1)
                messages = messages + [
                    {"role": "assistant", "content": content or ""},
                    {"role": "user", "content": f"That answer is invalid: {problem}. "
                     "Reply again with only the JSON object of the required form."},
                ]
                continue
            self._cache_write(key, answer)
            return Explanation(query, self.name, cues=cues, comparison=comparison,
                               candidates=expl)
        result.error = (f"LMM answer did not fit the schema after "
                        f"{self.schema_retries + 1} attempts: {problem}")
        return result

    def cache_key(self, messages: list[dict[str, Any]]) -> str:
        """sha256 over (model, messages with their images, response format, temperature)."""
        blob = json.dumps(
            {"model": self.model, "messages": messages, "format": self.response_format,
             "temperature": self.temperature},
            sort_keys=True, ensure_ascii=True,
        )
        return hashlib.sha256(blob.encode("ascii")).hexdigest()

    # -- cache --------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_read(self, key: str) -> dict | None:
        path = self._cache_path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["answer"]
        except (ValueError, KeyError):
            log.warning("ignoring unreadable LMM cache file %s", path)
            return None

    def _cache_write(self, key: str, answer: dict) -> None:
        text = json.dumps({"model": self.model, "answer": answer}, ensure_ascii=False, indent=1)
        atomic_write_text(self._cache_path(key), text)

    # -- HTTP ---------------------------------------------------------------------------
    def _client_or_fail(self):
        if self._client is None:
            api_key = os.environ.get("OPENAI_API_KEY")
            if not api_key:
                raise ConfigError("OPENAI_API_KEY is not set: export it, or use the offline "
                                  "explainer (--explainer offline)")
            import openai

            self._client = openai.OpenAI(api_key=api_key, base_url=self.base_url,
                                         timeout=self.timeout_s, max_retries=0)
        return self._client

    def _scrub(self, text: str) -> str:
        api_key = os.environ.get("OPENAI_API_KEY")
        return text.replace(api_key, "***") if api_key else text

    def _request(self, messages: list[dict[str, Any]]) -> str | None:
        """One completion, retried on 429 / 5xx / timeout with delay backoff_s · 2**attempt."""
        import openai

        client = self._client_or_fail()
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages,
                                  "temperature": self.temperature}
        if self.response_format == "json_schema":
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "erm_explanation", "strict": True, "schema": schema.LMM_OUTPUT_SCHEMA}}
        elif self.response_format == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        for attempt in range(self.max_retries + 1):
            if self.budget is not None and self.calls >= self.budget:
                raise _BudgetExhausted
            self.calls += 1
            try:
                response = client.chat.completions.create(**kwargs)
                return response.choices[0].message.content
            except (openai.RateLimitError, openai.InternalServerError,
                    openai.APITimeoutError) as err:
                what = "timeout" if isinstance(err, openai.APITimeoutError) else \
                    f"HTTP {err.status_code}"
                if attempt == self.max_retries:
                    raise _RequestFailed(f"LMM request failed after {attempt + 1} attempts "
                                     f"({what})") from None
                delay = self.backoff_s * 2**attempt
                log.warning("LMM request failed (%s); retry %d/%d in %.2f s",
                            what, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
            except openai.APIConnectionError:
                raise OfflineError(f"cannot reach the LMM endpoint {client.base_url}; check the "
                                   "network or --base-url, or use --explainer offline") from None
            except openai.APIStatusError as err:
                raise _RequestFailed(self._scrub(f"LMM request rejected: HTTP {err.status_code} "
                                             f"{err.message}")) from None
        raise AssertionError("unreachable")
