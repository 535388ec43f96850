"""LMM explanation of a top-k result through the OpenAI chat-completions API (ERM, part b).

One request per query carries the chain of CrossText2Loc's ERM: the model is asked for
(1) key cues of the description, (2) a comparison of the k candidates, each sent as its tile
and its relevance heatmap (base64 data-URL images), and (3) per candidate a rationale and a
confidence in [0, 1] — as JSON following :data:`~geotextloc.explain.schema.LMM_OUTPUT_SCHEMA`.

Robustness, so that a report can be re-executed and never crashes: answers that do not fit
the schema are sent back with the problem, up to ``schema_retries`` times, then reported as
``status="error"``; retries on 429 / 5xx / timeouts, the request ``budget`` (then
``status="budget_exhausted"``), the on-disk answer cache and the handling of the API key are
:class:`geotextloc.lmm.ChatClient`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from geotextloc.explain import schema
from geotextloc.explain.schema import BUDGET_EXHAUSTED, ERROR, Candidate, Explanation
from geotextloc.lmm import BudgetExhausted, ChatClient, RequestFailed, data_url

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
        formats = {"json_schema": {"type": "json_schema", "json_schema": {
            "name": "erm_explanation", "strict": True, "schema": schema.LMM_OUTPUT_SCHEMA}},
            "json_object": {"type": "json_object"}, None: None}
        self.client = ChatClient(model, base_url, cache_dir, budget, timeout_s, max_retries, backoff_s,
                                 formats[response_format], temperature, format_tag=response_format)
        self.model, self.budget, self.schema_retries = model, budget, schema_retries

    def __repr__(self) -> str:
        return (f"LMMExplainer(model={self.model!r}, base_url={self.client.base_url!r}, "
                f"calls={self.calls}, budget={self.budget})")

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    @property
    def calls(self) -> int:
        """Requests made so far (retries included)."""
        return self.client.calls

    def explain(self, query: str, candidates: Sequence[Candidate]) -> Explanation:
        names = [c.name for c in candidates]
        messages = build_messages(query, candidates)
        key = self.client.cache_key(messages)
        cached = self.client.cached(key)
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
                content = self.client.complete(messages)
            except BudgetExhausted:
                result.status = BUDGET_EXHAUSTED
                result.error = (f"LMM call budget of {self.budget} requests is spent; "
                                "raise the budget or use the offline explainer")
                return result
            except RequestFailed as err:
                result.error = str(err)
                return result
            try:
                answer = json.loads(_strip_fences(content))
                cues, comparison, expl = schema.parse_lmm_output(answer, names)
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                problem = str(err)
                log.warning("LMM answer does not fit the schema (%s); attempt %d/%d",
                            problem, attempt + 1, self.schema_retries + 1)
                messages = messages + [
                    {"role": "assistant", "content": content},
                    {"role": "user", "content": f"That answer is invalid: {problem}. "
                     "Reply again with only the JSON object of the required form."},
                ]
                continue
            self.client.remember(key, answer)
            return Explanation(query, self.name, cues=cues, comparison=comparison,
                               candidates=expl)
        result.error = (f"LMM answer did not fit the schema after "
                        f"{self.schema_retries + 1} attempts: {problem}")
        return result
