"""The unified multi-view description of a GeoLoc location (GeoBridge, CVPR 2026: its dataset construction, step d).

The paper has GPT-4o write one description per location from all three views: merge the
views, be concise, keep stable cues (roads, intersections, buildings, landmarks, rivers),
drop transient content and view-specific wording. :func:`describe_location` does that with
an LMM when a client is given (or OPENAI_API_KEY is set), and offline otherwise by merging
the views' texts or facts and filtering them with documented word lists:

- :data:`VIEW_SPECIFIC`: wording tied to one camera or picture ("in this photo", "from
  above", "aerial view", left/right, foreground) — removed from the sentence;
- :data:`TRANSIENT_WORDS`: things that change between visits (vehicles, people, animals,
  shadows, weather, time of day) — the clause that mentions one is dropped;
- :data:`STABLE_CUES`: a clause is kept only if it names one of these or a proper name.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from geotextloc.errors import OfflineError

STABLE_CUES = (  # what a unified description keeps: roads, intersections, buildings, landmarks, water
    "road street avenue boulevard lane highway motorway freeway alley path footpath bridge tunnel "
    "intersection junction crossroad crossing roundabout corner railway rail tram station platform "
    "building house tower church chapel cathedral mosque temple school university hospital museum "
    "library hall hotel mall market stadium arena castle monument statue landmark factory warehouse "
    "block roof square plaza park garden cemetery parking field forest river stream lake pond "
    "canal sea bay harbour harbor port marina shore coast beach water island"
).split()
TRANSIENT_WORDS = (  # content that changes between visits: dropped with its clause
    "car cars vehicle vehicles truck trucks bus buses van vans taxi taxis traffic motorcycle "
    "motorcycles bicycle bicycles bike bikes cyclist cyclists pedestrian pedestrians people person "
    "persons man men woman women child children crowd dog dogs bird birds boat boats parked "
    "driving walking moving shadow shadows cloud clouds cloudy sunlight sunny sun overcast rain "
    "rainy snow snowy puddle puddles fog foggy morning evening night daytime today umbrella "
    "umbrellas scaffolding crane"
).split()
VIEW_SPECIFIC = [  # wording tied to one camera or picture: removed from the sentence
    r"\b(?:in|on|within) (?:this|the) (?:photo(?:graph)?|image|picture|panorama|view|scene|frame|tile|shot)\b",
    r"\b(?:the|this) (?:photo(?:graph)?|image|picture|panorama|tile|view|scene|shot) "
    r"(?:shows|depicts|captures|contains|features|displays)\b",
    r"\bfrom (?:above|the air|the sky|overhead|the street|street level|ground level|this angle|this viewpoint|here)\b",
    r"\b(?:an? |the )?(?:aerial|bird'?s[- ]eye|top[- ]down|overhead|satellite|drone|uav|street[- ]level|"
    r"street[- ]view|ground[- ]level)(?: view| image| photo| perspective| imagery)\b(?: shows)?",
    r"\b(?:the|this|our) (?:camera|drone|satellite|viewer|photographer|observer)\b",
    r"\b(?:i|we|you|one) (?:can )?(?:see|notice|observe)\b",
    r"\b(?:i am|i'm|we are) (?:standing|located|positioned)\b",
    r"\b(?:is|are) (?:clearly |also )?(?:visible|seen|shown)\b",
    r"\bcan be (?:seen|observed|noticed)\b",
    r"\b(?:on|to|at) (?:the|your) (?:left|right)(?:[- ]hand side| side)?(?: of (?:the|this) (?:image|photo|picture|frame|view))?\b",
    r"\b(?:straight )?ahead(?: of (?:you|the camera|the viewer))?\b",
    r"\b(?:behind|in front of) (?:you|the camera|the viewer|the photographer)\b",
    r"\bin the (?:foreground|background|distance|middle|cent(?:re|er))(?: of (?:the|this) (?:image|photo|picture|frame|view))?\b",
    r"\bat the (?:top|bottom)(?: (?:left|right))?(?: of (?:the|this) (?:image|photo|picture|frame|view))?\b",
]
_VIEW_RE = re.compile("|".join(f"(?:{p})" for p in VIEW_SPECIFIC), re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
# "The view is taken on Mäyränkatu" says where the camera stood: the place is the street itself
_TAKEN_RE = re.compile(r"^(?:the|this) (?:view|photo(?:graph)?|picture|image|panorama) (?:is|was) taken (?:on|at|in) ",
                       re.IGNORECASE)
PROMPT = (
    "You write one description of a place seen in three views of the same location: a drone "
    "(UAV) image, a street-view panorama and a satellite tile. Merge the views into one concise "
    "description (at most 5 sentences). Keep only stable cues that identify the place from any "
    "view: roads and their layout, intersections, buildings and their shapes, landmarks, rivers "
    "and other water. Drop transient content (vehicles, people, animals, shadows, weather, "
    "time of day) and view-specific wording (\"in this photo\", \"from above\", left/right, "
    "foreground/background). Answer with the description only."
)


def _clauses(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|[;,]\s*|\s+\b(?:while|whereas|but)\b\s+", text)
    return [p.strip(" .!?") for p in parts if p and p.strip(" .!?")]


def _is_transient(clause: str) -> bool:
    return any(_in(w.lower(), TRANSIENT_WORDS) for w in _WORD_RE.findall(clause))


def _has_stable_cue(clause: str) -> bool:
    words = _WORD_RE.findall(clause)
    named = any(w[0].isupper() for w in words[1:])  # a proper name (landmark, street name)
    return named or any(_in(w.lower(), STABLE_CUES) for w in words)


def _in(word: str, vocabulary: Sequence[str]) -> bool:
    """``word`` or its singular (-s, -es) is in ``vocabulary``."""
    if word in vocabulary:
        return True
    return word.endswith("s") and (word[:-1] in vocabulary or (word.endswith("es") and word[:-2] in vocabulary))


def _tidy(clause: str) -> str:
    clause = re.sub(r"\s{2,}", " ", clause).strip(" ,.;:-")
    clause = re.sub(r"^(?:and|also|then)\s+", "", clause, flags=re.IGNORECASE)
    # a clause whose place phrase was removed ("A park is [on the left]") loses its dangling verb
    clause = re.sub(r"\s+(?:is|are|stands|stand|lies|lie|sits|sit|runs|run)$", "", clause, flags=re.IGNORECASE)
    return clause[:1].upper() + clause[1:] if clause else ""


def clean_description(text: str, require_cue: bool = True) -> list[str]:
    """The clauses of ``text`` without view-specific wording, without clauses that mention
    transient content, and (``require_cue``) only those naming a stable cue or a proper name."""
    out = []
    for clause in _clauses(text):
        if _is_transient(clause):
            continue
        clause = _tidy(_VIEW_RE.sub(" ", _TAKEN_RE.sub("This is ", clause)))
        if len(_WORD_RE.findall(clause)) < 2 or (require_cue and not _has_stable_cue(clause)):
            continue
        out.append(clause)
    return out


def unified_description_offline(views: Mapping[str, str | Sequence[str]], max_clauses: int = 8) -> str:
    """Step (d) without an LMM: merge the texts or fact lists of the views (in the given
    order), strip view-specific wording and transient clauses (:data:`VIEW_SPECIFIC`,
    :data:`TRANSIENT_WORDS`), keep clauses with stable cues (:data:`STABLE_CUES` or proper
    names), drop near-duplicates across views (word-set Jaccard ≥ 0.7), keep ``max_clauses``."""
    kept: list[str] = []
    seen: list[set[str]] = []
    for value in views.values():
        texts = [value] if isinstance(value, str) else list(value)
        for clause in (c for text in texts for c in clean_description(text)):
            words = {w.lower() for w in _WORD_RE.findall(clause)} - {"a", "an", "the", "of", "is", "are"}
            if any(len(words & s) / max(len(words | s), 1) >= 0.7 for s in seen):
                continue
            kept.append(clause)
            seen.append(words)
    return " ".join(f"{c}." for c in kept[:max_clauses])


def description_messages(views: Mapping[str, str | Sequence[str]], images: Mapping[str, Image.Image] | None = None):
    """Chat messages for the LMM: the paper's instructions, then each view's image and notes."""
    from geotextloc.lmm import data_url

    content: list[dict[str, Any]] = []
    for view in dict.fromkeys([*(images or {}), *views]):
        if images and view in images:
            buf = io.BytesIO()
            images[view].convert("RGB").save(buf, format="PNG")
            content.append({"type": "text", "text": f"{view} image:"})
            content.append({"type": "image_url", "image_url": {"url": data_url(buf.getvalue())}})
        notes = views.get(view)
        if notes:
            notes = notes if isinstance(notes, str) else "; ".join(notes)
            content.append({"type": "text", "text": f"{view} notes: {notes}"})
    return [{"role": "system", "content": PROMPT}, {"role": "user", "content": content}]


def lmm_client(model: str = "gpt-4o", cache_dir: str | Path = ".cache/lmm", **options) -> Callable[[list], str]:
    """``complete(messages) -> text`` over the project's chat client
    (:class:`geotextloc.lmm.ChatClient`: key from OPENAI_API_KEY, OPENAI_BASE_URL, retries with
    backoff on 429/5xx/timeouts, a request budget, an on-disk cache)."""
    from geotextloc.lmm import BudgetExhausted, ChatClient, RequestFailed

    client = ChatClient(model=model, cache_dir=cache_dir, **options)

    def complete(messages: list) -> str:
        key = client.cache_key(messages)
        cached = client.cached(key)
        if isinstance(cached, dict) and "description" in cached:
            return cached["description"]
        try:
            text = client.complete(messages)
        except (RequestFailed, BudgetExhausted) as err:
            raise OfflineError(f"LMM description failed: {err or 'request budget spent'}; "
                               "use client=None for the offline describer") from None
        client.remember(key, {"description": text})
        return text

    return complete


def describe_location(
    views: Mapping[str, str | Sequence[str]],
    images: Mapping[str, Image.Image] | None = None,
    client: Callable[[list], str] | str | None = "auto",
    max_clauses: int = 8,
) -> str:
    """Step (d): one unified description of a location from its views.

    ``views`` maps a view ('drone', 'street', 'satellite') to its text or facts; ``images``
    the view images sent to the LMM. ``client``: a callable ``messages -> text`` (e.g.
    :func:`lmm_client`; make one and pass it for many locations), ``"auto"`` (the LMM when OPENAI_API_KEY is set, else offline) or
    None (offline, :func:`unified_description_offline`). The LMM's answer passes the same
    filter (view-specific wording and transient clauses removed) as a safety net.
    """
    if client == "auto":
        client = lmm_client() if os.environ.get("OPENAI_API_KEY") else None
    if client is None:
        return unified_description_offline(views, max_clauses)
    answer = client(description_messages(views, images))
    return " ".join(f"{c}." for c in clean_description(answer, require_cue=False))
