"""Step 3 of the CVG-Text text pipeline: chain prompting, in the paper's fixed order.

CVG-Text prompts GPT-4o systematically: first the **road features**, then the **building
landmarks**, then the **overall environment**, with simple directions (front, back, left,
right). :data:`STEPS` is that order; a writer returns a :class:`ChainResult` with one part
per step, and the description is the three parts joined in order.

Two writers follow the chain from the same *extracted facts*
(:func:`geotextloc.data.text_pipeline.extract`: OCR hits with positions, the segmentation's classes
and positions, the record's coordinates and heading):

- :class:`OpenAIWriter`: an OpenAI-compatible LMM through :class:`geotextloc.lmm.ChatClient`
  (answer cache, request budget, retries; the key from ``OPENAI_API_KEY`` only). One
  conversation per street view: the system prompt, then the image with the extracted facts
  and step 1's instruction; each later step adds the previous answer and the next
  instruction (:func:`step_messages`). Each step is one request, cached on its own, so a run
  stopped by the budget resumes at the step it stopped at.
- :class:`geotextloc.text.offline_writer.OfflineWriter`: no network; the same three steps
  written from the same facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEPS = ("road", "buildings", "environment")  # the paper's order

SYSTEM_PROMPT = """You describe a street-level photo so that someone could find the place on a map \
from your words alone, as a person standing there would describe it. Work step by step, in this \
order: road features, then building landmarks, then the overall environment. Use only the simple \
directions front, back, left and right, relative to the camera (the picture's centre is front). \
Mention shop names, bus stops and other signs exactly as read in the image; never invent a name, \
a number or a street name you cannot read. Write plain sentences in the first person, no lists, \
no headings, no coordinates."""

STEP_PROMPTS = {
    "road": "Step 1 of 3, road features: describe the road where you stand - its width and lanes, "
            "pavements, markings, poles and signs on poles, side streets and where the road leads "
            "(front, back, left, right). Two to four sentences.",
    "buildings": "Step 2 of 3, building landmarks: describe the buildings around you - their height and "
                 "distance, the shops and the names on their signs, and where each one is (front, back, "
                 "left, right). Three to five sentences.",
    "environment": "Step 3 of 3, overall environment: describe the wider surroundings - trees, grass, "
                   "water, open sky, and whether the area feels commercial or residential. Two or three "
                   "sentences.",
}


@dataclass
class ChainResult:
    """The three parts of one description, in :data:`STEPS` order."""

    parts: dict[str, str]
    cues: list[str] = field(default_factory=list)  # names (OCR text) as written in the text
    writer: str = ""
    requests: int = 0  # LMM requests made for this result (not served from the cache)

    @property
    def text(self) -> str:
        return " ".join(self.parts[s].strip() for s in STEPS if self.parts.get(s, "").strip())


def facts_for_prompt(facts: dict) -> dict:
    """What the LMM is told besides the image: kept OCR hits with positions, the segmentation
    summary (and whether it is ground truth), coordinates and heading; no dropped text."""
    hits = [{"text": h["text"], "direction": h["direction"], "on": h.get("on"), "plate_colour": h.get("colour")}
            for h in facts["ocr"] if not h.get("dropped")]
    seg = facts.get("segments") or {}
    return {"view": facts["view"], "coordinates": [facts["lat"], facts["lon"]], "heading_deg": facts.get("heading_deg"),
            "ocr_text": hits, "segments": {k: seg[k] for k in ("by_direction", "buildings", "road") if k in seg}}


def step_messages(facts: dict, image_url: str | None, answers: dict[str, str], step: str) -> list[dict[str, Any]]:
    """The conversation for ``step``: system prompt, the image and facts with step 1's
    instruction, then for each earlier step its answer and the next instruction."""
    intro = [{"type": "text", "text": "Extracted facts (OCR text with positions, segmentation, location):\n"
              + json.dumps(facts_for_prompt(facts), ensure_ascii=False, sort_keys=True)}]
    if image_url is not None:
        intro.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for s in STEPS[: STEPS.index(step) + 1]:
        content = STEP_PROMPTS[s]
        messages.append({"role": "user", "content": intro + [{"type": "text", "text": content}]}
                        if s == STEPS[0] else {"role": "user", "content": content})
        if s != step:
            messages.append({"role": "assistant", "content": answers[s]})
    return messages


def cues_in(text: str, facts: dict) -> list[str]:
    """The kept OCR texts that the description names (verbatim), in order of appearance."""
    names = {h["text"] for h in facts["ocr"] if not h.get("dropped")}
    found = [(text.find(n), n) for n in names if n and n in text]
    return [n for _, n in sorted(found)]


class OpenAIWriter:
    """The chain through an OpenAI-compatible endpoint (module docstring). ``write`` raises
    :class:`geotextloc.lmm.BudgetExhausted` when the budget runs out mid-chain (the steps
    done are cached: the next run continues from there)."""

    def __init__(self, client, send_image: bool = True):
        self.client, self.send_image = client, send_image
        self.name = f"openai:{client.model}"

    def write(self, facts: dict, image_path: Path | None = None, attempt: int = 0) -> ChainResult:
        from geotextloc.lmm import data_url

        url = data_url(image_path) if (self.send_image and image_path is not None) else None
        answers: dict[str, str] = {}
        requests = 0
        for step in STEPS:
            messages = step_messages(facts, url, answers, step)
            if attempt:  # another try after a failed review: a new conversation, cached apart
                messages[0] = {"role": "system", "content": f"{SYSTEM_PROMPT} (Attempt {attempt + 1}.)"}
            key = self.client.cache_key(messages)
            answer = self.client.cached(key)
            if not isinstance(answer, str):
                answer = self.client.complete(messages).strip()
                requests += 1
                self.client.remember(key, answer)
            answers[step] = " ".join(answer.split())
        result = ChainResult(answers, writer=self.name, requests=requests)
        result.cues = cues_in(result.text, facts)
        return result
